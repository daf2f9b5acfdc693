"""The Wan VAE's CPU fast paths (models/vaes/wan.py) against diffusers' AutoencoderKLWan (and
AutoencoderKLQwenImage, the same code) as it ships, on the same random weights: oneDNN channels-last Conv3d with the spatial padding inside
the convolution, and the fused channel RMS norm (float rounding apart)."""

from __future__ import annotations

import pytest
import torch
import diffusers

from sglang_diffusion.models.vaes.wan import accelerate_wan_vae
from sglang_diffusion.testing import cached_model

TOL = 1e-5


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / a.norm()).item()


@pytest.mark.parametrize("family,cls", [("wan2.1-t2v", "AutoencoderKLWan"), ("wan2.2-ti2v-5b", "AutoencoderKLWan"),
                                        ("qwen-image", "AutoencoderKLQwenImage")])
def test_accelerated_vae_decodes_and_encodes_as_diffusers(family, cls):
    folder = cached_model(family, "tiny") / "vae"
    ref = getattr(diffusers, cls).from_pretrained(folder).eval()
    ours = getattr(diffusers, cls).from_pretrained(folder).eval()
    with torch.no_grad():  # zero-initialised parts too: every weight must matter
        for p, q in zip(ref.parameters(), ours.parameters()):
            p.normal_(0, 0.2)
            q.copy_(p)
    done = accelerate_wan_vae(ours)
    assert done["rms_norm"] > 0 and done["causal_conv"] > 0
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, ref.config.z_dim, 3, 6, 10, generator=g)
    video = torch.rand(1, 3, 5, 48, 80, generator=g) * 2 - 1
    with torch.inference_mode():
        assert rel_err(ref.decode(z).sample, ours.decode(z).sample) <= TOL
        assert rel_err(ref.encode(video).latent_dist.mean, ours.encode(video).latent_dist.mean) <= TOL
