"""`sglang generate` on the tiny Wan models with backend auto: it runs natively (the log names the
pipeline and the attention backend), writes the MP4, and matches `--backend diffusers` with the
same seed. The Wan2.2 variants go through the same Engine in-process; their pipelines are checked
against diffusers in test_wan_pipelines.py."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest
from PIL import Image

from tests.conftest import run_cli

pytestmark = pytest.mark.slow

ARGS = ("--prompt", "a paper boat", "--height", 64, "--width", 64, "--num-frames", 9,
        "--num-inference-steps", 2, "--seed", 42)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def generate(model, out, *extra):
    proc = run_cli("generate", "--model-path", model, *ARGS, "--output-path", out, "--output-file-name", "v.mp4",
                   *extra)
    assert proc.returncode == 0, proc.stderr
    return proc, iio.imread(out / "v.mp4", plugin="pyav")


def test_generate_image_to_video_runs_natively_and_writes_the_mp4(tiny_model, tmp_path):
    Image.new("RGB", (64, 64), (220, 120, 20)).save(tmp_path / "first.png")
    proc, frames = generate(tiny_model("wan2.1-i2v"), tmp_path, "--image-path", tmp_path / "first.png")
    assert frames.shape == (9, 64, 64, 3)
    assert "pipeline WanImageToVideoPipeline on sglang backend (family wan2.1-i2v), attention: " in proc.stderr
    assert "image_encoding" in proc.stdout and "denoising" in proc.stdout


@pytest.mark.parametrize("family", ["wan2.2-t2v-a14b", "wan2.2-ti2v-5b"])
def test_engine_runs_wan22_natively_and_writes_the_mp4(family, tiny_model, tmp_path, caplog):
    """The same Engine as the CLI's, in this process (each CLI run costs a fresh interpreter)."""
    import logging

    from sglang_diffusion.api import DiffGenerator

    request = dict(zip([a.removeprefix("--").replace("-", "_") for a in ARGS[::2]], ARGS[1::2]))
    with caplog.at_level(logging.INFO), DiffGenerator.from_pretrained(str(tiny_model(family))) as gen:
        result = gen.generate(**request, output_path=str(tmp_path), output_file_name="v.mp4")
    assert [str(f) for f in result.files] == [str(tmp_path / "v.mp4")]
    assert iio.imread(tmp_path / "v.mp4", plugin="pyav").shape == (9, 64, 64, 3)
    assert f"pipeline WanPipeline on sglang backend (family {family}), attention: " in caplog.text


def test_native_and_diffusers_backends_write_the_same_video(tiny_model, tmp_path):
    (tmp_path / "native").mkdir()
    (tmp_path / "diffusers").mkdir()
    proc, native = generate(tiny_model("wan2.1-t2v"), tmp_path / "native")  # backend auto
    assert native.shape == (9, 64, 64, 3)
    assert "pipeline WanPipeline on sglang backend (family wan2.1-t2v), attention: " in proc.stderr
    proc, reference = generate(tiny_model("wan2.1-t2v"), tmp_path / "diffusers", "--backend", "diffusers")
    assert "on diffusers backend" in proc.stderr
    assert psnr(reference, native) >= 40.0
