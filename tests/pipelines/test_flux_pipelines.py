"""Native FLUX.1 pipeline against diffusers' FluxPipeline on the tiny models, same seed: dev
(embedded guidance), dev with true CFG and a negative prompt at a size that rounds, several
images per prompt, and schnell (no guidance embedding); `sglang generate` with backend auto."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from sglang_diffusion.config.sampling_params import SamplingParams
from sglang_diffusion.config.server_args import ServerArgs
from sglang_diffusion.models.dits.flux import pack_latents
from sglang_diffusion.pipelines.registry import build_pipeline
from sglang_diffusion.platform import Platform
from tests.compare import psnr, rel_err
from tests.conftest import run_cli

pytestmark = pytest.mark.slow

REQUEST = dict(prompt="a red cube on a table", height=64, width=48, num_inference_steps=2, seed=7)
LATENT_TOL = 1e-4
MIN_PSNR = 40.0


@pytest.fixture(scope="module")
def schnell(tiny_model, tmp_path_factory):
    """The tiny FLUX.1 folder with a transformer without guidance embedding (schnell's)."""
    from diffusers import FluxTransformer2DModel

    dev = tiny_model("flux.1")
    folder = tmp_path_factory.mktemp("flux-schnell")
    shutil.copytree(dev, folder, dirs_exist_ok=True)
    config = json.loads((dev / "transformer" / "config.json").read_text())
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    torch.manual_seed(5)
    model = FluxTransformer2DModel(**{**config, "guidance_embeds": False})
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    shutil.rmtree(folder / "transformer")
    model.save_pretrained(folder / "transformer")
    return folder


def diffusers_run(folder, request: dict):
    """diffusers' FluxPipeline on the same request: (final packed latents, uint8 images [B, 1, H, W, 3])."""
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(folder)
    seen = {}

    def keep_latents(p, step, t, kwargs):
        seen["latents"] = kwargs["latents"]
        return kwargs

    kwargs = {k: v for k, v in request.items() if k not in ("seed", "num_outputs_per_prompt")}
    kwargs["num_images_per_prompt"] = request.get("num_outputs_per_prompt", 1)
    out = pipe(**kwargs, generator=torch.Generator("cpu").manual_seed(request["seed"]), output_type="np",
               callback_on_step_end=keep_latents).images
    return seen["latents"], (np.clip(out, 0, 1) * 255).round().astype(np.uint8)[:, None]


CASES = {
    "dev": ("flux.1", REQUEST),
    "dev_true_cfg_rounded_size": ("flux.1", dict(REQUEST, negative_prompt="blurry", true_cfg_scale=3.0, height=72,
                                                 width=88, num_outputs_per_prompt=2)),
    "schnell": ("schnell", dict(REQUEST, guidance_scale=0.0)),
}


@pytest.mark.parametrize("case", CASES)
def test_native_matches_diffusers_with_the_same_seed(case, tiny_model, schnell):
    family, request = CASES[case]
    folder = schnell if family == "schnell" else tiny_model(family)
    pipe = build_pipeline(ServerArgs(model_path=str(folder)), Platform.current())
    assert pipe.describe()["backend"] == "sglang"
    state = pipe.run(SamplingParams(**request))
    latents, images = diffusers_run(folder, request)
    assert rel_err(latents, pack_latents(state.latents[:, :, 0])) <= LATENT_TOL
    height, width = request["height"] // 16 * 16, request["width"] // 16 * 16
    assert state.frames.shape == images.shape == (request.get("num_outputs_per_prompt", 1), 1, height, width, 3)
    assert psnr(images, state.frames) >= MIN_PSNR


def test_true_cfg_needs_a_negative_prompt_and_guidance_scale_stays_embedded(tiny_model):
    pipe = build_pipeline(ServerArgs(model_path=str(tiny_model("flux.1"))), Platform.current())
    plain = pipe.run(SamplingParams(**REQUEST, true_cfg_scale=4.0))  # no negative prompt: off, as diffusers
    assert not plain.do_cfg and plain.negative_prompt_embeds is None
    guided = pipe.run(SamplingParams(**REQUEST, true_cfg_scale=4.0, negative_prompt="dark"))
    assert guided.do_cfg and rel_err(plain.latents, guided.latents) > 1e-3
    other_guidance = pipe.run(SamplingParams(**dict(REQUEST, guidance_scale=1.5)))
    assert not other_guidance.do_cfg and rel_err(plain.latents, other_guidance.latents) > 1e-3


@pytest.mark.slow
def test_generate_runs_natively_and_writes_the_png(tiny_model, tmp_path):
    proc = run_cli("generate", "--model-path", tiny_model("flux.1"), "--prompt", "a red cube", "--height", 64,
                   "--width", 48, "--num-inference-steps", 2, "--seed", 3, "--output-path", tmp_path,
                   "--output-file-name", "a.png")
    assert proc.returncode == 0, proc.stderr
    assert "pipeline FluxPipeline on sglang backend (family flux.1), attention: " in proc.stderr
    assert np.asarray(Image.open(tmp_path / "a.png")).shape == (64, 48, 3)
    proc = run_cli("generate", "--model-path", tiny_model("flux.1"), "--prompt", "a red cube", "--height", 64,
                   "--width", 48, "--num-inference-steps", 2, "--seed", 3, "--output-path", tmp_path,
                   "--output-file-name", "b.png", "--backend", "diffusers")
    assert proc.returncode == 0, proc.stderr
    assert psnr(np.asarray(Image.open(tmp_path / "a.png")), np.asarray(Image.open(tmp_path / "b.png"))) >= MIN_PSNR
