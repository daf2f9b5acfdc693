"""Ring, Ulysses and USP attention in 2 and 4 gloo processes against full attention
(`attention_reference`) on one process: several ring sizes (block counts), token counts that do
not divide the ranks (padding masked out), and the latent gather after denoising."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist

from sglang_diffusion.attention.selector import select_attention_backend
from sglang_diffusion.distributed.parallel_state import ParallelLayout, RankGroup, initialize_model_parallel
from sglang_diffusion.distributed.ring import merge_partials, ring_attention
from sglang_diffusion.distributed.sharding import SequenceShard
from sglang_diffusion.ops.attention import attention, attention_reference
from tests.distributed import pool
from tests.distributed.pool import backends

TOL = 2e-5  # fp32: the merge reorders sums, nothing more


def _qkv(b, s, h, d, seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(b, s, h, d, generator=gen).to(pool.device()) for _ in range(3)]


def _err(got, want) -> float:
    return ((got.float() - want.float()).abs().max() / want.float().abs().max()).item()


# ---- cases: module-level functions, run on every rank of a pool ------------------------------


def ring_case(ring_sizes, seq_lens, b=2, h=3, d=16):
    """Ring attention alone, on the first R ranks, for each R and S: (R, S) -> (out err, lse err)."""
    me, errors = dist.get_rank(), {}
    for r in ring_sizes:
        ranks = tuple(range(r))
        group = dist.new_group(list(ranks))  # collective over the world: every rank creates it
        for s_total in seq_lens:
            if me not in ranks:
                continue
            q, k, v = _qkv(b, s_total, h, d, seed=r * 1000 + s_total)
            want_out, want_lse = attention_reference(q, k, v)
            s = math.ceil(s_total / r)
            valid = [max(0, min(s, s_total - j * s)) for j in range(r)]

            def shard(t, j, s=s, valid=valid):
                part = t[:, j * s:j * s + valid[j]]
                return torch.cat([part, part.new_zeros(b, s - valid[j], h, d)], dim=1)

            out, lse = ring_attention(shard(q, me), shard(k, me), shard(v, me), attention,
                                      RankGroup(ranks, me, group), valid)
            n = valid[me]
            if n:
                errors[(r, s_total)] = (_err(out[:, :n], want_out[:, me * s:me * s + n]),
                                        _err(lse[:, :, :n], want_lse[:, :, me * s:me * s + n]))
    return errors


def sp_case(world, layout_args, seq_lens, backend_name="fa", b=2, h=8, d=16):
    """SequenceShard.attention on a layout over ranks 0..world-1: S -> error of the gathered
    output against full attention (None on ranks outside the layout)."""
    groups = initialize_model_parallel(ParallelLayout(world, *layout_args), ranks=range(world))
    if groups is None:
        return None
    backend = select_attention_backend(backend_name, device=pool.device(), dtype=torch.float32, head_dim=d)
    errors = {}
    for s_total in seq_lens:
        q, k, v = _qkv(b, s_total, h, d, seed=s_total)
        want, _ = attention_reference(q, k, v)
        seq = SequenceShard(s_total, groups)
        local = seq.attention(seq.split(q, 1), seq.split(k, 1), seq.split(v, 1), backend)
        assert local.shape == (b, seq.shard_len, h, d)
        errors[s_total] = _err(seq.gather(local, 1), want)
    return errors


def gather_latents_case(grid, patch):
    """Each rank corrupts every latent element it does not own; the gather must undo it."""
    world = dist.get_world_size()
    groups = initialize_model_parallel(ParallelLayout(world, ulysses=world))
    gen = torch.Generator().manual_seed(0)
    shape = (2, 3, *(g * p for g, p in zip(grid, patch)))
    truth = torch.randn(shape, generator=gen).to(pool.device())
    seq = SequenceShard(math.prod(grid), groups)
    mine = seq.owned_mask(grid, patch, truth.device)
    mask_sum = mine.to(torch.int32).clone()
    dist.all_reduce(mask_sum, group=groups.sp.group)
    local = torch.where(mine, truth, torch.full_like(truth, 1e6 * (dist.get_rank() + 1)))
    return torch.equal(seq.gather_latents(local, grid, patch), truth), bool((mask_sum == 1).all())


# ---- tests -----------------------------------------------------------------------------------


def test_merge_of_two_halves_equals_attention_over_both():
    q, k, v = _qkv(2, 7, 3, 8, seed=1)
    o1, l1 = attention_reference(q, k[:, :3], v[:, :3])
    o2, l2 = attention_reference(q, k[:, 3:], v[:, 3:])
    out, lse = merge_partials(*merge_partials(None, None, o1, l1), o2, l2)
    want_out, want_lse = attention_reference(q, k, v)
    assert _err(out, want_out) < 1e-6 and _err(lse, want_lse) < 1e-6


@pytest.mark.parametrize("backend", backends(4))
def test_ring_attention_matches_full_attention_for_2_3_and_4_blocks_and_uneven_tokens(pools, backend):
    # 37 over 4: shards of 10, the last one 7 real; 5 over 4: 2, 2, 1 and an empty block
    results = pools(backend).run(ring_case, (2, 3, 4), (48, 37, 5))
    checked = {key for per_rank in results for key in per_rank}
    assert checked == {(r, s) for r in (2, 3, 4) for s in (48, 37, 5)}
    for per_rank in results:
        for key, (out_err, lse_err) in per_rank.items():
            assert out_err < TOL and lse_err < TOL, (key, out_err, lse_err)


# world, (tp, ulysses, ring, cfg); token counts that divide and that do not
LAYOUTS = {
    "ulysses2": (2, (1, 2, 1, 1)), "ring2": (2, (1, 1, 2, 1)),
    "ulysses4": (4, (1, 4, 1, 1)), "ring4": (4, (1, 1, 4, 1)), "usp2x2": (4, (1, 2, 2, 1)),
    "ulysses2-cfg2": (4, (1, 2, 1, 2)), "ring2-two-replicas": (4, (1, 1, 2, 1)),
}


@pytest.mark.parametrize("backend", backends(4))
@pytest.mark.parametrize("layout", LAYOUTS)
def test_sequence_parallel_attention_matches_full_attention(pools, backend, layout):
    world, layout_args = LAYOUTS[layout]
    results = pools(backend).run(sp_case, world, layout_args, (64, 61, 3))
    assert all(r is None for r in results[world:])
    for per_rank in results[:world]:
        assert set(per_rank) == {64, 61, 3} and all(err < TOL for err in per_rank.values()), per_rank


def test_ulysses_runs_a_backend_without_lse_and_ring_refuses_it(pools):
    for per_rank in pools().run(sp_case, 2, (1, 2, 1, 1), (9,), "torch_sdpa")[:2]:
        assert per_rank[9] < TOL
    with pytest.raises(RuntimeError, match="ring attention needs the log-sum-exp; backend torch_sdpa"):
        pools().run(sp_case, 2, (1, 1, 2, 1), (9,), "torch_sdpa")


@pytest.mark.parametrize("grid, patch", [((3, 4, 4), (1, 2, 2)), ((3, 3, 3), (1, 2, 2)), ((1, 1, 3), (1, 1, 1))])
def test_latents_gathered_once_after_denoising_are_exact(pools, grid, patch):
    for exact, each_element_owned_once in pools().run(gather_latents_case, grid, patch):
        assert exact and each_element_owned_once
