"""--vae-sp: the tiles of the Wan VAE's tiled decode split across 2 and 4 gloo ranks give what
one rank's `vae.decode` (diffusers' `tiled_decode`) gives, bit for bit: with 12 tiles, with 3
tiles on 2 ranks (uneven) and on 4 ranks (one rank has none), and with Wan2.2's 2x2 patched VAE.
Plus how `configure_vae` reads vae_sp."""

from __future__ import annotations

import logging

import pytest
import torch

from sglang_diffusion.config.server_args import ServerArgs
from sglang_diffusion.distributed.parallel_state import ParallelLayout, initialize_model_parallel, parallel_groups
from sglang_diffusion.distributed.vae_parallel import sp_decode
from sglang_diffusion.pipelines.stages.decoding import configure_vae
from tests.distributed.pool import backends

# (family, latent [F', H', W'], spatial compression), tiled by 64-pixel tiles every 48 pixels
LATENTS = {
    "12 tiles": ("wan2.1-t2v", (3, 16, 24), 8),  # 8x8 latent tiles every 6: 3 rows x 4 columns
    "3 tiles": ("wan2.1-t2v", (3, 6, 16), 8),  # 1 row x 3 columns
    "9 tiles, patched": ("wan2.2-ti2v-5b", (2, 8, 8), 16),  # 4x4 latent tiles every 3: 3 x 3
}


def load_vae(path, device="cpu"):
    from diffusers import AutoencoderKLWan

    from sglang_diffusion.models.vaes.wan import accelerate_wan_vae

    vae = AutoencoderKLWan.from_pretrained(path / "vae").to(device).eval()
    vae.enable_tiling(tile_sample_min_height=64, tile_sample_min_width=64, tile_sample_stride_height=48,
                      tile_sample_stride_width=48)
    if device == "cpu":
        accelerate_wan_vae(vae)  # as the pipeline runs it on a CPU
    return vae


def latent(vae, shape, device):
    g = torch.Generator().manual_seed(0)
    return torch.randn(1, vae.config.z_dim, *shape, generator=g).to(device)


def decode_case(world, paths, names):
    """On ranks 0..world-1: {name: (sp_decode, and on rank 0 vae.decode)} for each latent."""
    from tests.distributed.pool import device

    if initialize_model_parallel(ParallelLayout(world, ulysses=world), ranks=range(world)) is None:
        return None
    out = {}
    with torch.inference_mode():
        for name in names:
            family, shape, _ = LATENTS[name]
            vae = load_vae(paths[family], device())
            z = latent(vae, shape, device())
            split = sp_decode(vae, z, parallel_groups().sp).cpu()
            out[name] = (split, vae.decode(z, return_dict=False)[0].cpu() if parallel_groups().sp.rank == 0 else None)
    return out


def check_against_one_rank(pool, world, names, tiny_model, exact):
    paths = {family: tiny_model(family) for family, _, _ in LATENTS.values()}
    results = pool.run(decode_case, world, paths, names, timeout=300)
    assert all(r is None for r in results[world:])
    for name in names:
        want = results[0][name][1]
        _, shape, compression = LATENTS[name]
        assert want.shape[-2:] == (compression * shape[1], compression * shape[2])
        for rank in range(world):
            got = results[rank][name][0]
            if exact:
                assert torch.equal(got, want), (name, rank, (got - want).abs().max().item())
            else:  # cuDNN does not promise the same bits from one call to the next
                torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", backends(2))
def test_two_ranks_give_the_single_rank_tiled_decode_bit_for_bit(pools, backend, tiny_model):
    check_against_one_rank(pools(backend), 2, ["12 tiles", "3 tiles", "9 tiles, patched"], tiny_model,
                           exact=backend == "gloo")


@pytest.mark.parametrize("backend", backends(4))
def test_four_ranks_on_three_tiles_one_rank_idle_give_the_single_rank_tiled_decode(pools, backend, tiny_model):
    check_against_one_rank(pools(backend), 4, ["3 tiles"], tiny_model, exact=backend == "gloo")


def test_vae_sp_turns_tiling_on_and_is_a_no_op_on_one_rank(tiny_model, caplog):
    from diffusers import AutoencoderKLWan

    path = tiny_model("wan2.1-t2v")
    with caplog.at_level(logging.INFO, logger="sglang_diffusion.pipelines.stages.decoding"):
        vae = AutoencoderKLWan.from_pretrained(path / "vae")
        assert configure_vae(vae, ServerArgs(vae_sp=True), sp_size=2) and vae.use_tiling
        assert "VAE tiling turned on" in caplog.text
        vae = AutoencoderKLWan.from_pretrained(path / "vae")
        assert not configure_vae(vae, ServerArgs(vae_sp=True), sp_size=1) and not vae.use_tiling
        assert "one sequence-parallel rank, nothing to split" in caplog.text
