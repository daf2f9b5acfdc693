"""Native Wan in bf16 against diffusers' bf16 run (its transformer loaded with torch_dtype=bf16,
so its fp32-kept modules stay fp32: what a user would run), same weights and seed, where the
CPU runs bf16 fast (the measured policy keeps bf16 there); skipped where it does not.

Tolerance: bf16 rounds activations to 8 bits of mantissa, in a different order in the two
implementations. Measured on the AVX2 machine with the policy forced to keep bf16 (the kernels
are correct there, only slow): 47.6 dB on the tiny model; MIN_PSNR leaves margin for other CPUs'
bf16 kernels (oneDNN/AMX round differently).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sglang_diffusion import precision
from sglang_diffusion.config.sampling_params import SamplingParams
from sglang_diffusion.config.server_args import ServerArgs
from sglang_diffusion.pipelines.registry import build_pipeline
from sglang_diffusion.platform import Platform
from tests.pipelines.test_wan_pipelines import psnr

REQUEST = dict(prompt="a red fox in the snow", negative_prompt="blurry", height=64, width=64, num_frames=9,
               num_inference_steps=4, guidance_scale=5.0, seed=11)
MIN_PSNR = 40.0


def diffusers_bf16_frames(folder) -> np.ndarray:
    import diffusers

    transformer = diffusers.WanTransformer3DModel.from_pretrained(folder, subfolder="transformer",
                                                                  torch_dtype=torch.bfloat16)
    pipe = diffusers.WanPipeline.from_pretrained(folder, transformer=transformer)
    kwargs = {k: v for k, v in REQUEST.items() if k != "seed"}
    out = pipe(**kwargs, generator=torch.Generator("cpu").manual_seed(REQUEST["seed"]), output_type="np").frames
    return (np.clip(out, 0, 1) * 255).round().astype(np.uint8)


def test_native_bf16_matches_diffusers_bf16(tiny_model):
    chosen, reason = precision.choose("bf16", precision.cpu_rates())
    if chosen != "bf16":
        pytest.skip(f"this CPU runs bf16 as fp32 ({reason})")
    folder = tiny_model("wan2.1-t2v")
    pipe = build_pipeline(ServerArgs(model_path=str(folder), dit_precision="bf16", text_encoder_precisions=["fp32"]),
                          Platform.current())
    assert pipe.describe()["dit_dtype"] == "bfloat16"
    frames = pipe.run(SamplingParams(**REQUEST)).frames
    assert psnr(diffusers_bf16_frames(folder), frames) >= MIN_PSNR
