"""The native Wan VAE decoder (models/vaes/wan_decoder.py) against diffusers' AutoencoderKLWan
decode on the same random weights: Wan 2.1's VAE and one with Wan 2.2's 2x2 pixel patching (the
demo model's first layout) and one with 2x temporal upsampling in the last block (its current one),
plain and with the CPU fast paths, fp32 and bf16."""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKLWan

from sglang_diffusion.models.vaes.wan_decoder import WanVAEDecoder, supports
from sglang_diffusion.testing import cached_model

PATCHED = dict(base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1, attn_scales=[],
               temperal_downsample=[False, True, True], in_channels=12, out_channels=12, patch_size=2,
               scale_factor_temporal=4, scale_factor_spatial=16, latents_mean=[0.0] * 4, latents_std=[1.0] * 4)
# the demo model's layout: 2x temporal, in the last upsampler only
TEMPORAL_LAST = {**PATCHED, "temperal_downsample": [False, False, True], "in_channels": 3, "out_channels": 3,
                 "patch_size": None, "scale_factor_temporal": 2, "scale_factor_spatial": 8}


@pytest.fixture(scope="module", params=["wan2.1", "patched", "temporal-last"])
def folder(request, tmp_path_factory):
    if request.param == "wan2.1":
        ref = AutoencoderKLWan.from_pretrained(cached_model("wan2.1-t2v", "tiny") / "vae")
    else:
        ref = AutoencoderKLWan(**(PATCHED if request.param == "patched" else TEMPORAL_LAST))
    with torch.no_grad():  # zero-initialised parts too: every weight must matter
        for p in ref.parameters():
            p.normal_(0, 0.2, generator=torch.Generator().manual_seed(p.numel()))
    path = tmp_path_factory.mktemp("vae")
    ref.save_pretrained(path)
    return path


def _rel(a, b) -> float:
    return ((a.float() - b.float()).norm() / a.float().norm()).item()


@pytest.mark.parametrize("fast", [False, True])
def test_decodes_as_diffusers(folder, fast):
    ref = AutoencoderKLWan.from_pretrained(folder).eval()
    ours = WanVAEDecoder.from_pretrained(folder)
    if fast:
        assert ours.use_cpu_fast_paths() > 0
    z = torch.randn(1, ref.config.z_dim, 3, 4, 6, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = ref.decode(z).sample
        got = ours.decode(z, return_dict=False)[0]
    assert got.shape == expected.shape  # [1, 3, F, H, W]: 1 + 4 * 2 frames (1 + 2 * 2 at 2x temporal)
    assert _rel(got, expected) <= 1e-5
    assert ours.config.z_dim == ref.config.z_dim and ours.config.latents_mean == ref.config.latents_mean


def test_bf16_decodes_as_diffusers_bf16(folder):
    ref = AutoencoderKLWan.from_pretrained(folder, torch_dtype=torch.bfloat16).eval()
    ours = WanVAEDecoder.from_pretrained(folder, dtype=torch.bfloat16)
    z = torch.randn(1, ref.config.z_dim, 2, 4, 4, generator=torch.Generator().manual_seed(0)).bfloat16()
    with torch.inference_mode():
        assert _rel(ours.decode(z).sample, ref.decode(z).sample) <= 1e-3


def test_only_the_wan21_decoder_is_native():
    assert supports({"_class_name": "AutoencoderKLWan", "is_residual": False})
    assert not supports({"_class_name": "AutoencoderKLWan", "is_residual": True})  # Wan 2.2 TI2V-5B
    assert not supports({"_class_name": "AutoencoderKLQwenImage"})


@pytest.fixture(scope="module", params=["wan2.1", "temporal-last", "wan2.1-pairs-alike", "temporal-last-pairs-alike"])
def frame_independent_folder(request, tmp_path_factory):
    """A VAE whose causal convolutions give their past frames zero weight (trained frame by
    frame, as the demo model's): random weights, those taps zeroed; "pairs-alike": the temporal
    upsamplers' two output halves equal too (the demo's draws each latent frame twice)."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

    ref = AutoencoderKLWan(**({**PATCHED, "patch_size": None, "in_channels": 3, "out_channels": 3,
                               "scale_factor_spatial": 8} if request.param.startswith("wan2.1") else TEMPORAL_LAST))
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.2, generator=torch.Generator().manual_seed(p.numel()))
        for m in ref.modules():
            if isinstance(m, WanCausalConv3d) and m.kernel_size[0] > 1:
                m.weight[:, :, :-1] = 0
            if request.param.endswith("pairs-alike") and hasattr(m, "time_conv"):
                half = m.time_conv.out_channels // 2
                m.time_conv.weight[half:] = m.time_conv.weight[:half]
                m.time_conv.bias[half:] = m.time_conv.bias[:half]
    path = tmp_path_factory.mktemp("pairs-alike" if request.param.endswith("pairs-alike") else "per-frame")
    ref.save_pretrained(path)
    return path


@pytest.mark.parametrize("fast", [False, True])
def test_a_frame_independent_vae_decodes_frames_apart_as_diffusers(frame_independent_folder, fast):
    ref = AutoencoderKLWan.from_pretrained(frame_independent_folder).eval()
    ours = WanVAEDecoder.from_pretrained(frame_independent_folder)
    assert ours.per_frame
    assert ours.repeats_frames == frame_independent_folder.name.startswith("pairs-alike")
    assert all(m.kernel_size[0] == 1 for m in ours.modules() if isinstance(m, torch.nn.Conv3d))
    if fast:
        assert ours.use_cpu_fast_paths() > 0
    # two videos of 6 latent frames: each first frame alone, then the 10 later ones in batches of 8 and 2
    z = torch.randn(2, ref.config.z_dim, 6, 4, 6, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = ref.decode(z).sample
        got = ours.decode(z).sample
    assert got.shape == expected.shape
    assert _rel(got, expected) <= 1e-5


def test_a_vae_that_sees_past_frames_decodes_in_sequence(folder):
    ours = WanVAEDecoder.from_pretrained(folder)
    assert not ours.per_frame and not ours.repeats_frames
