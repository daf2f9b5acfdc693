"""output_quality / output_compression: JPEG and WebP quality, PNG's zlib level, MP4's x264 CRF, on
the files `sglang generate` writes and the images the server encodes."""

from __future__ import annotations

import numpy as np
import pytest

from sglang_diffusion.server.media import encode_image
from sglang_diffusion.storage.local import DEFAULT_CRF, image_save_options, save_outputs, video_crf


@pytest.fixture(scope="module")
def frames():
    rng = np.random.default_rng(0)
    smooth = np.linspace(0, 255, 96, dtype=np.float64)[None, :, None] * np.ones((96, 1, 3))
    noisy = np.clip(smooth + rng.normal(0, 40, smooth.shape), 0, 255)
    return np.stack([noisy] * 9).astype(np.uint8)[None]  # [1, 9, 96, 96, 3]


def _size(frames, tmp_path, name, is_video=False, **quality) -> int:
    item = frames if is_video else frames[:, :1]
    (path,) = save_outputs(item, is_video, str(tmp_path), name, "x", 0, 8, **quality)
    return path.stat().st_size


@pytest.mark.parametrize("name", ["a.jpg", "a.webp", "a.mp4"])
def test_higher_quality_writes_a_larger_lossy_file(frames, tmp_path, name):
    video = name.endswith(".mp4")
    low = _size(frames, tmp_path / "low", name, video, quality=10)
    high = _size(frames, tmp_path / "high", name, video, quality=95)
    assert high > 1.5 * low
    # compression is 100 - quality (OpenAI's name for the same knob)
    assert _size(frames, tmp_path / "c", name, video, compression=90) == low


def test_png_stays_lossless_and_compression_picks_its_zlib_level(frames, tmp_path):
    from PIL import Image

    fast = _size(frames, tmp_path / "fast", "a.png", compression=0)
    small = _size(frames, tmp_path / "small", "a.png", compression=100)
    assert small < fast
    assert np.array_equal(np.asarray(Image.open(tmp_path / "small" / "a.png")), frames[0, 0])
    assert image_save_options(".png", quality=50) == {}  # quality means nothing to a lossless format


def test_crf_follows_quality_and_defaults_to_18():
    assert (video_crf(), video_crf(100), video_crf(1), video_crf(compression=50)) == (DEFAULT_CRF, 0, 50, 26)


def test_server_encodes_images_at_the_requested_quality(frames):
    frame = frames[0, 0]
    assert len(encode_image(frame, "jpeg", quality=95)) > 1.5 * len(encode_image(frame, "jpeg", quality=10))
    assert encode_image(frame, "webp", compression=90) == encode_image(frame, "webp", quality=10)
    assert encode_image(frame, "png") == encode_image(frame, "png", quality=10)
