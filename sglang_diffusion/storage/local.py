"""Writing outputs to disk: images as PNG/JPEG/WebP (by extension), videos as H.264 MP4."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from sglang_diffusion.errors import InvalidRequestError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
VIDEO_EXTENSIONS = (".mp4",)


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


def write_image(path: Path, frame: np.ndarray) -> None:  # frame: uint8 [H, W, 3]
    from PIL import Image

    Image.fromarray(frame).save(path)


def write_video(path: Path, frames: np.ndarray, fps: int) -> None:  # frames: uint8 [F, H, W, 3]
    import imageio.v2 as imageio

    # macro_block_size=1: keep the exact size (imageio would otherwise resize to multiples of 16)
    with imageio.get_writer(path, fps=fps, codec="libx264", macro_block_size=1,
                            ffmpeg_log_level="error", output_params=["-crf", "18"]) as writer:
        for frame in frames:
            writer.append_data(frame)


def save_outputs(frames: np.ndarray, is_video: bool, output_dir: str, file_name: str | None,
                 prompt: str | None, seed: int, fps: int) -> list[Path]:
    """frames: uint8 [N, F, H, W, 3] -> one file per output."""
    out_dir = Path(output_dir).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = output_paths(out_dir, file_name, prompt, seed, len(frames), is_video)
    for path, item in zip(paths, frames):
        if is_video:
            write_video(path, item, fps)
        else:
            write_image(path, item[0])
    return paths
