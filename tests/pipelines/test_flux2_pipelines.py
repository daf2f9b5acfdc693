"""Native FLUX.2 pipeline against diffusers' Flux2Pipeline on the tiny model, same seed: text to
image (at a size that rounds), editing with one and with two reference images; both backends run
the folder without torchvision (its tokenizer is a PixtralProcessor)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sglang_diffusion.config.sampling_params import SamplingParams
from sglang_diffusion.config.server_args import ServerArgs
from sglang_diffusion.pipelines.registry import build_pipeline
from sglang_diffusion.platform import Platform
from tests.compare import psnr, rel_err

pytestmark = pytest.mark.slow

REQUEST = dict(prompt="a blue teapot", height=64, width=48, num_inference_steps=2, seed=5, guidance_scale=2.5)
LATENT_TOL = 1e-4
MIN_PSNR = 40.0


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("refs")
    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate([(64, 80), (96, 64)]):
        paths.append(folder / f"ref{i}.png")
        Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def native(tiny_model):
    return build_pipeline(ServerArgs(model_path=str(tiny_model("flux.2"))), Platform.current())


def diffusers_run(folder, request: dict, images=()):
    """diffusers' Flux2Pipeline, its tokenizer loaded alone (no torchvision here):
    (final packed latents [B, S, 128], uint8 images [B, 1, H, W, 3])."""
    from diffusers import Flux2Pipeline
    from transformers import AutoTokenizer

    pipe = Flux2Pipeline.from_pretrained(folder, tokenizer=None)
    pipe.tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
    seen = {}

    def keep_latents(p, step, t, kwargs):
        seen["latents"] = kwargs["latents"]
        return kwargs

    kwargs = {k: v for k, v in request.items() if k != "seed"}
    if images:
        kwargs["image"] = [Image.open(p).convert("RGB") for p in images]
    out = pipe(**kwargs, generator=torch.Generator("cpu").manual_seed(request["seed"]), output_type="np",
               callback_on_step_end=keep_latents).images
    return seen["latents"], (np.clip(out, 0, 1) * 255).round().astype(np.uint8)[:, None]


@pytest.mark.parametrize("count", [0, 1, 2], ids=["text", "one_image", "two_images"])
def test_native_matches_diffusers_with_the_same_seed(native, tiny_model, images, count):
    request = dict(REQUEST, height=72, width=88) if count == 0 else REQUEST
    paths = images[:count]
    image_path = None if count == 0 else (str(paths[0]) if count == 1 else [str(p) for p in paths])
    state = native.run(SamplingParams(**request, image_path=image_path))
    latents, frames = diffusers_run(tiny_model("flux.2"), request, paths)
    assert rel_err(latents, state.latents[:, :, 0].flatten(2).transpose(1, 2)) <= LATENT_TOL
    height, width = request["height"] // 16 * 16, request["width"] // 16 * 16
    assert state.frames.shape == frames.shape == (1, 1, height, width, 3)
    assert psnr(frames, state.frames) >= MIN_PSNR


def test_reference_images_change_the_result_and_small_ones_are_refused(native, images, tmp_path):
    from sglang_diffusion.errors import InvalidRequestError

    plain = native.run(SamplingParams(**REQUEST))
    edited = native.run(SamplingParams(**REQUEST, image_path=str(images[0])))
    assert rel_err(plain.latents, edited.latents) > 1e-3
    Image.new("RGB", (40, 80)).save(tmp_path / "small.png")
    with pytest.raises(InvalidRequestError, match="image_path: Image too small"):
        native.run(SamplingParams(**REQUEST, image_path=str(tmp_path / "small.png")))


def test_both_backends_load_the_folder_without_torchvision(native, tiny_model, caplog):
    import logging

    import transformers

    assert not transformers.utils.is_torchvision_available()
    with caplog.at_level(logging.INFO):
        pipe = build_pipeline(ServerArgs(model_path=str(tiny_model("flux.2")), backend="diffusers"),
                              Platform.current())
    assert "PixtralProcessor needs torchvision (not installed); loaded its tokenizer" in caplog.text
    out = pipe.generate(SamplingParams(**REQUEST))
    assert psnr(out.frames, native.generate(SamplingParams(**REQUEST)).frames) >= MIN_PSNR


def test_generate_runs_natively_and_writes_the_png(tiny_model, tmp_path, images):
    from tests.conftest import run_cli

    proc = run_cli("generate", "--model-path", tiny_model("flux.2"), "--prompt", "a blue teapot", "--height", 64,
                   "--width", 48, "--num-inference-steps", 2, "--image-path", images[0], "--output-path", tmp_path,
                   "--output-file-name", "a.png")
    assert proc.returncode == 0, proc.stderr
    assert "pipeline Flux2Pipeline on sglang backend (family flux.2), attention: " in proc.stderr
    assert np.asarray(Image.open(tmp_path / "a.png")).shape == (64, 48, 3)
