"""The diffusers backend with components in different dtypes: a bf16 DiT beside an fp32 VAE,
the CPU default where bf16 pays (AMX, AVX-512-BF16). diffusers' FluxPipeline hands the
transformer's latents to the VAE as they are; the backend makes the VAE take them in its own
dtype. The rates are mocked fast so that bf16 is kept on any CPU."""

from __future__ import annotations

import pytest
import torch

from sglang_diffusion import precision
from sglang_diffusion.config.sampling_params import SamplingParams
from sglang_diffusion.config.server_args import ServerArgs
from sglang_diffusion.pipelines.registry import build_pipeline
from sglang_diffusion.platform import Platform
from tests.compare import psnr

FAST_BF16 = precision.Rates({"matmul": {"fp32": 100.0, "bf16": 300.0}, "attention": {"fp32": 50.0, "bf16": 150.0}})
# bf16 rounds the DiT's activations to 8 bits of mantissa: 43.4 dB measured on an AMD EPYC with
# AVX-512-BF16; the margin is for other CPUs' bf16 kernels.
MIN_PSNR = 35.0
REQUEST = dict(prompt="a red fox in the snow", height=32, width=48, num_inference_steps=2, seed=3)


def run(folder, dit_precision: str):
    pipe = build_pipeline(ServerArgs(model_path=str(folder), backend="diffusers", dit_precision=dit_precision,
                                     text_encoder_precisions=[dit_precision, dit_precision]), Platform.current())
    return pipe.describe(), pipe.generate(SamplingParams(**REQUEST, save_output=False)).frames[0]


def test_bf16_dit_and_fp32_vae_generate_close_to_fp32(tiny_model, monkeypatch):
    monkeypatch.setattr(precision, "cpu_rates", lambda cache_dir=None: FAST_BF16)
    folder = tiny_model("flux.1")
    described, image = run(folder, "bf16")
    assert (described["dit_dtype"], described["vae_dtype"]) == ("bfloat16", "float32"), described
    _, reference = run(folder, "fp32")
    assert image.shape == reference.shape == (1, 32, 48, 3)
    assert psnr(reference, image) >= MIN_PSNR
