"""The native HunyuanVideo pipeline against diffusers' HunyuanVideoPipeline on the tiny random-weight
model with the same seed (latents within 1e-4 relative, frames PSNR >= 40 dB), backend auto
running it natively, the frame-count correction and the embedded guidance."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from sglang_diffusion.config.sampling_params import SamplingParams
from sglang_diffusion.config.server_args import ServerArgs
from sglang_diffusion.pipelines.registry import build_pipeline
from sglang_diffusion.platform import Platform
from tests.compare import psnr

REQUEST = dict(prompt="a red kite over the dunes", height=32, width=48, num_frames=5, num_inference_steps=2,
               guidance_scale=6.0, seed=7)
LATENT_TOL = 1e-4
MIN_PSNR = 40.0


@pytest.fixture(scope="module")
def model(tiny_model):
    return tiny_model("hunyuanvideo")


@pytest.fixture(scope="module")
def native(model):
    return build_pipeline(ServerArgs(model_path=str(model)), Platform.current())


@pytest.fixture(scope="module")
def reference(model):
    """diffusers' pipeline: (latents, frames uint8 [F, H, W, 3]) for REQUEST and for guidance 1."""
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(model)
    kw = {k: v for k, v in REQUEST.items() if k != "seed"}

    def run(**extra):
        args = {**kw, **extra}
        latents = pipe(**args, generator=torch.Generator("cpu").manual_seed(REQUEST["seed"]),
                       output_type="latent").frames
        frames = pipe(**args, generator=torch.Generator("cpu").manual_seed(REQUEST["seed"]), output_type="np").frames
        return latents, np.round(frames[0] * 255).astype(np.uint8)

    return {"default": run(), "guidance 1": run(guidance_scale=1.0),
            "true cfg": run(true_cfg_scale=3.0, negative_prompt="blurry, low quality")}


def test_backend_auto_runs_it_natively(native):
    assert native.backend == "sglang" and native.describe()["family"] == "hunyuanvideo"
    assert [s.name for s in native.stages] == ["input_validation", "text_encoding", "latent_preparation",
                                               "timestep_preparation", "denoising", "decoding"]


CASES = {"default": REQUEST, "guidance 1": dict(REQUEST, guidance_scale=1.0),
         "true cfg": dict(REQUEST, true_cfg_scale=3.0, negative_prompt="blurry, low quality")}


@pytest.mark.parametrize("case", CASES)
def test_equals_diffusers_with_the_same_seed(native, reference, case):
    params = CASES[case]
    state = native.run(SamplingParams(**params))
    latents, frames = reference[case]
    rel = ((state.latents - latents).norm() / latents.norm()).item()
    assert rel <= LATENT_TOL, rel
    assert state.frames.shape == (1, *frames.shape)
    assert psnr(state.frames[0], frames) >= MIN_PSNR


def test_embedded_guidance_changes_the_output_without_a_cfg_pass(native, reference):
    a, b = reference["default"][0], reference["guidance 1"][0]
    assert ((a - b).norm() / a.norm()).item() > 1e-3  # the guidance embedding matters
    assert native.stages[-2].describe() == "denoising(HunyuanVideoTransformer3DModel, cfg auto)"


def test_frame_count_corrected_as_diffusers_with_a_warning(native, caplog):
    with caplog.at_level(logging.WARNING):
        out = native.generate(SamplingParams(**dict(REQUEST, num_frames=8, num_inference_steps=1)))
    assert out.params.num_frames == 5 and out.frames.shape[1] == 5  # diffusers: (8 - 1) // 4 * 4 + 1
    assert "num_frames 8: this model makes 4 k + 1 frames; using 5" in caplog.text
