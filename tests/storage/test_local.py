"""Output file naming and writing."""

import imageio.v3 as iio
import numpy as np
import pytest
from PIL import Image

from sglang_diffusion.errors import InvalidRequestError
from sglang_diffusion.storage.local import output_paths, save_outputs


def _frames(n, f, h=16, w=24):
    return np.random.default_rng(0).integers(0, 256, size=(n, f, h, w, 3), dtype=np.uint8)


def test_given_name_is_used_as_is_with_spaces(tmp_path):
    (path,) = save_outputs(_frames(1, 5), True, str(tmp_path), "A curious raccoon.mp4", "p", 1, 8)
    assert path == tmp_path / "A curious raccoon.mp4"
    assert iio.imread(path, plugin="pyav").shape == (5, 16, 24, 3)


@pytest.mark.parametrize("ext", [".png", ".jpg", ".webp"])
def test_image_format_follows_the_extension(tmp_path, ext):
    (path,) = save_outputs(_frames(1, 1), False, str(tmp_path), "img" + ext, None, 0, 1)
    fmt = {".png": "PNG", ".jpg": "JPEG", ".webp": "WEBP"}[ext]
    assert Image.open(path).format == fmt and Image.open(path).size == (24, 16)


def test_png_round_trips_exactly(tmp_path):
    frames = _frames(1, 1)
    (path,) = save_outputs(frames, False, str(tmp_path), None, "a cat", 3, 1)
    assert np.array_equal(np.asarray(Image.open(path)), frames[0, 0])


def test_made_up_names_come_from_prompt_and_seed_and_never_replace_a_file(tmp_path):
    first = output_paths(tmp_path, None, "A cat, on a mat!", 42, 1, False)[0]
    assert first.name == "A_cat_on_a_mat_42.png"
    first.write_bytes(b"earlier output")
    second = output_paths(tmp_path, None, "A cat, on a mat!", 42, 1, False)[0]
    assert second != first and second.name == "A_cat_on_a_mat_42-1.png"


def test_name_without_extension_gets_the_task_format(tmp_path):
    assert output_paths(tmp_path, "clip", None, 0, 1, True)[0].name == "clip.mp4"
    assert [p.name for p in output_paths(tmp_path, "clip.mp4", None, 0, 2, True)] == ["clip_0.mp4", "clip_1.mp4"]


def test_wrong_extension_for_the_task_is_refused(tmp_path):
    with pytest.raises(InvalidRequestError, match="a video is written as .mp4"):
        output_paths(tmp_path, "clip.png", None, 0, 1, True)
    with pytest.raises(InvalidRequestError, match="an image is written as"):
        output_paths(tmp_path, "img.mp4", None, 0, 1, False)
