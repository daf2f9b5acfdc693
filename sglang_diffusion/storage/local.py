"""Writing outputs to disk: images as PNG/JPEG/WebP (by extension), videos as H.264 MP4, at the
request's output_quality (or 100 - output_compression) where the format is lossy."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from sglang_diffusion.errors import InvalidRequestError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
VIDEO_EXTENSIONS = (".mp4",)
DEFAULT_CRF = 18  # x264: visually near-lossless; PIL's own defaults hold for JPEG (75) and WebP (80)
MAX_CRF = 51


def _quality(quality: int | None, compression: int | None) -> int | None:
    return 100 - compression if compression is not None else quality


def image_save_options(ext: str, quality: int | None = None, compression: int | None = None) -> dict:
    """PIL `save()` options of an image file type: JPEG / WebP quality; PNG (lossless) its zlib
    level, compression x 9 / 100, when a compression is given."""
    if ext.lower() == ".png":
        return {"compress_level": round(compression * 9 / 100)} if compression is not None else {}
    q = _quality(quality, compression)
    return {"quality": q} if q is not None else {}


def video_crf(quality: int | None = None, compression: int | None = None) -> int:
    """x264's constant rate factor for a quality of 1-100: 100 -> 0 (lossless) .. 0 -> 51."""
    q = _quality(quality, compression)
    return DEFAULT_CRF if q is None else round((100 - q) * MAX_CRF / 100)


def default_stem(prompt: str | None, seed: int) -> str:
    words = re.sub(r"[^\w\s-]", "", prompt or "").strip()
    words = re.sub(r"\s+", "_", words)[:60].rstrip("_") or "output"
    return f"{words}_{seed}"


def output_paths(output_dir: Path, file_name: str | None, prompt: str | None, seed: int, count: int,
                 is_video: bool) -> list[Path]:
    """Where each of `count` outputs goes. A given name is used as is (its extension picks the
    format); a made-up one never replaces an existing file."""
    allowed = VIDEO_EXTENSIONS if is_video else IMAGE_EXTENSIONS
    if file_name is not None:
        stem, ext = Path(file_name).stem, Path(file_name).suffix.lower()
        if not ext:
            stem, ext = file_name, allowed[0]
        elif ext not in allowed:
            kind = "a video" if is_video else "an image"
            raise InvalidRequestError(f"output_file_name {file_name!r}: {kind} is written as "
                                      f"{' / '.join(allowed)}, not {ext}")
        if count == 1:
            return [output_dir / (file_name if Path(file_name).suffix else stem + ext)]
        return [output_dir / f"{stem}_{i}{ext}" for i in range(count)]
    stem, ext = default_stem(prompt, seed), allowed[0]
    paths = []
    for i in range(count):
        base = stem if count == 1 else f"{stem}_{i}"
        candidate, n = output_dir / f"{base}{ext}", 1
        while candidate.exists():
            candidate, n = output_dir / f"{base}-{n}{ext}", n + 1
        paths.append(candidate)
    return paths


def write_image(path: Path, frame: np.ndarray, quality: int | None = None,  # frame: uint8 [H, W, 3]
                compression: int | None = None) -> None:
    from PIL import Image

    Image.fromarray(frame).save(path, **image_save_options(path.suffix, quality, compression))


def write_video(path: Path, frames: np.ndarray, fps: int, quality: int | None = None,  # frames: uint8 [F, H, W, 3]
                compression: int | None = None) -> None:
    import imageio.v2 as imageio

    # macro_block_size=1: keep the exact size (imageio would otherwise resize to multiples of 16)
    crf = str(video_crf(quality, compression))
    with imageio.get_writer(path, fps=fps, codec="libx264", macro_block_size=1,
                            ffmpeg_log_level="error", output_params=["-crf", crf]) as writer:
        for frame in frames:
            writer.append_data(frame)


def save_outputs(frames: np.ndarray, is_video: bool, output_dir: str, file_name: str | None,
                 prompt: str | None, seed: int, fps: int, quality: int | None = None,
                 compression: int | None = None) -> list[Path]:
    """frames: uint8 [N, F, H, W, 3] -> one file per output (`quality` / `compression`: the
    request's output_quality / output_compression)."""
    out_dir = Path(output_dir).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = output_paths(out_dir, file_name, prompt, seed, len(frames), is_video)
    for path, item in zip(paths, frames):
        if is_video:
            write_video(path, item, fps, quality, compression)
        else:
            write_image(path, item[0], quality, compression)
    return paths
