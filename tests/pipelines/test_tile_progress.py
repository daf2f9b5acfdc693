"""VAE tiles' progress: with --vae-tiling the decoder's calls are counted, and for the Wan VAE
the count known up front is the one diffusers' tiled decode makes."""

import logging

import pytest
import torch

from sglang_diffusion.pipelines.stages.decoding import _wan_tile_calls, tile_progress


@pytest.fixture(scope="module")
def wan_vae(tiny_model):
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan.from_pretrained(tiny_model("wan2.1-t2v") / "vae").eval()


@pytest.mark.parametrize("size,tiles", [((8, 8), 9), ((8, 12), 12), ((4, 4), 1)])
def test_wan_tiled_decode_reports_every_tile_and_ends_at_the_count_it_announced(wan_vae, caplog, size, tiles):
    wan_vae.enable_tiling(tile_sample_min_height=32, tile_sample_min_width=32, tile_sample_stride_height=24,
                          tile_sample_stride_width=24)
    z = torch.randn(1, wan_vae.config.z_dim, 2, *size)  # [B, C, F', H', W']: 2 latent frames
    assert _wan_tile_calls(wan_vae, z) == tiles * 2
    with caplog.at_level(logging.INFO, logger="sglang_diffusion.progress"), torch.inference_mode():
        with tile_progress(wan_vae, z):
            wan_vae.decode(z, return_dict=False)
    assert caplog.records[-1].getMessage().startswith(f"vae tiles: tile {tiles * 2}/{tiles * 2}, ")


def test_no_tiles_no_progress(wan_vae, caplog):
    wan_vae.disable_tiling()
    z = torch.randn(1, wan_vae.config.z_dim, 1, 4, 4)
    with caplog.at_level(logging.INFO, logger="sglang_diffusion.progress"), torch.inference_mode():
        with tile_progress(wan_vae, z):
            wan_vae.decode(z, return_dict=False)
    assert not caplog.records
