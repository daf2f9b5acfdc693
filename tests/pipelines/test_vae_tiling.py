"""VAE tiling (`enable_vae_tiling`, shared by the native and diffusers backends): every tile key a
shipped VAE takes, at any size (below the stride, below one latent element, not a multiple of
the compression), decodes the video of the requested size; keys a VAE does not take are refused."""

from __future__ import annotations

import logging

import pytest
import torch

from sglang_diffusion.config.sampling_params import SamplingParams
from sglang_diffusion.config.server_args import ServerArgs, VaeConfig
from sglang_diffusion.errors import ConfigError
from sglang_diffusion.pipelines.stages.decoding import _TILE_KEYS, enable_vae_tiling

# One family per VAE class we ship; (frames, height, width) of the decoded sample
VAE_FAMILIES = {
    "wan2.1-t2v": (5, 32, 32),  # AutoencoderKLWan
    "wan2.2-ti2v-5b": (5, 32, 32),  # AutoencoderKLWan with a patch (16x spatial)
    "hunyuanvideo": (9, 32, 32),  # AutoencoderKLHunyuanVideo: the only one with temporal tiles
    "qwen-image": (1, 32, 32),  # AutoencoderKLQwenImage
    "flux.1": None,  # AutoencoderKL: tiles fixed by the VAE, no keys
    "flux.2": None,  # AutoencoderKLFlux2: no keys
}
# Below one latent element, not a multiple of the compression, below the stride
SIZES = {"tile_sample_min_height": (1, 20), "tile_sample_min_width": (12,),
         "tile_sample_min_num_frames": (1, 4, 6)}


def _vae(family: str):
    from sglang_diffusion.testing import _spec

    torch.manual_seed(0)
    return _spec(family, "tiny").components["vae"].instantiate().eval()


def _latents(vae, frames, height, width) -> torch.Tensor:
    from sglang_diffusion.pipelines.stages.decoding import _compression

    s, t = _compression(vae, "height"), _compression(vae, "num_frames")
    channels = vae.config.get("z_dim") or vae.config.latent_channels
    shape = (1, channels, (frames - 1) // t + 1, height // s, width // s)
    return torch.randn(shape, generator=torch.Generator().manual_seed(0))


@pytest.mark.slow
@pytest.mark.parametrize("family", VAE_FAMILIES)
def test_every_tile_key_a_vae_takes_gives_the_requested_size(family):
    import inspect

    vae = _vae(family)
    accepted = inspect.signature(vae.enable_tiling).parameters
    for key in _TILE_KEYS:
        if key not in accepted:
            with pytest.raises(ConfigError, match=key):
                enable_vae_tiling(_vae(family), VaeConfig(**{key: 16}))
    keys = [k for k in _TILE_KEYS if k in accepted]
    if not keys:
        return
    frames, height, width = VAE_FAMILIES[family]
    z = _latents(vae, frames, height, width)
    with torch.no_grad():
        expected = vae.decode(z, return_dict=False)[0].shape
    assert expected[-2:] == (height, width) and expected[2] == frames
    for key in keys:
        for size in SIZES[key]:
            tiled = _vae(family)
            enable_vae_tiling(tiled, VaeConfig(**{key: size}))
            with torch.no_grad():
                shape = tiled.decode(z, return_dict=False)[0].shape
            assert shape == expected, f"{family} {key}={size}: {tuple(shape)} instead of {tuple(expected)}"


def test_temporal_tile_below_the_stride_shrinks_it_in_whole_latent_frames(caplog):
    vae = _vae("hunyuanvideo")
    with caplog.at_level(logging.INFO):
        enable_vae_tiling(vae, VaeConfig(tile_sample_min_num_frames=10))
    # 10 frames are 2 latent frames of 4 (8 frames); diffusers' stride of 12 shrinks to 4 (one latent frame)
    assert (vae.tile_sample_min_num_frames, vae.tile_sample_stride_num_frames) == (8, 4)
    assert "tile_sample_min_num_frames=10: tiles are whole latent elements, using 8" in caplog.text
    with pytest.raises(ConfigError, match="must be positive"):
        enable_vae_tiling(_vae("hunyuanvideo"), VaeConfig(tile_sample_min_num_frames=0))


def test_diffusers_backend_decodes_all_frames_with_a_small_temporal_tile(tiny_model):
    """The issue's case: --vae-tiling with tile_sample_min_num_frames 4 and 9 frames (it gave 5)."""
    from sglang_diffusion.pipelines.registry import build_pipeline
    from sglang_diffusion.platform import Platform

    args = ServerArgs(model_path=str(tiny_model("hunyuanvideo")), backend="diffusers", vae_tiling=True,
                      vae_config=VaeConfig(tile_sample_min_num_frames=4))
    pipe = build_pipeline(args, Platform.current())
    out = pipe.generate(SamplingParams(prompt="a boat", height=32, width=32, num_frames=9, num_inference_steps=1,
                                       seed=0))
    assert out.frames.shape == (1, 9, 32, 32, 3)
