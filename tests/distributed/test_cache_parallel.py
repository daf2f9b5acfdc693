"""Step caching across ranks: with Ulysses, ring or CFG parallelism every rank takes the single
rank's skip decisions (the residual difference is summed over the SP group, padding left out)
and gives its cached result (fp32, 1e-4 relative), for DBCache and TeaCache, on 27 tokens
(which do not divide the ranks)."""

from __future__ import annotations

import pytest
import torch.distributed as dist

from sglang_diffusion.cache import Caching
from sglang_diffusion.config.cache import CacheDitParams, DBCacheParams
from sglang_diffusion.config.sampling_params import SamplingParams
from sglang_diffusion.distributed.parallel_state import initialize_model_parallel, resolve_layout
from sglang_diffusion.pipelines.registry import build_pipeline
from sglang_diffusion.pipelines.stages.denoising import CfgLayout, DenoisingStage
from sglang_diffusion.platform import Platform
from tests.distributed.pool import backends
from tests.distributed.test_wan_parallel import rel_err, server_args

REQUEST = dict(prompt="a red fox in the snow", negative_prompt="blurry", height=48, width=48, num_frames=9,
               num_inference_steps=8, guidance_scale=5.0, seed=11)
# a threshold the tiny model's residual differences (0.09 .. 0.21 over 8 steps) cross: mixed decisions
DBCACHE = CacheDitParams(DBCacheParams(residual_diff_threshold=0.15, max_warmup_steps=1,
                                       max_continuous_cached_steps=-1))
CASES = {"dbcache": dict(), "teacache": dict(enable_teacache=True, teacache_thresh=1.0)}
LAYOUTS = [(2, 2, 1, 1), (2, 1, 2, 1), (2, 1, 1, 2)]  # (num_gpus, ulysses, ring, cfg)


def run_cases(model_path, layout=(1, None, None, 1)):
    """Every case on this rank -> {case: (latents, the cache's report)}. Two-pass guidance: its
    branches are the CFG-parallel ranks' ones, each with its own cache."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    pipe = build_pipeline(server_args(model_path, *layout), Platform.current(rank))
    stage = next(s for s in pipe.stages if isinstance(s, DenoisingStage))
    stage.cfg, stage.caching = CfgLayout("two_pass"), Caching(DBCACHE)
    out = {}
    for name, fields in CASES.items():
        state = pipe.run(SamplingParams(**REQUEST, **fields))
        out[name] = (state.latents.cpu(), state.cache_stats.describe())
    return out


def layout_case(layout, model_path):
    resolved, _ = resolve_layout(server_args(model_path, *layout), num_heads=2)
    if initialize_model_parallel(resolved, ranks=range(layout[0])) is None:
        return None
    return run_cases(model_path, layout)


@pytest.mark.slow
@pytest.mark.parametrize("backend", backends(2))
@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda l: "gpus{}-ulysses{}-ring{}-cfg{}".format(*l))
def test_every_rank_takes_the_single_rank_decisions(pools, backend, layout, tiny_model):
    path = tiny_model("wan2.1-t2v")
    single = run_cases(path)
    assert " 0 skipped" not in single["dbcache"][1] and " 0 skipped" not in single["teacache"][1]
    results = pools(backend).run(layout_case, layout, path, timeout=600)
    for rank, per_rank in enumerate(results[:layout[0]]):
        for name, (latents, report) in single.items():
            got, got_report = per_rank[name]
            if layout[3] == 1:  # SP: each rank counts the same block-steps as one rank
                assert got_report == report, (rank, name)
            assert rel_err(got, latents) <= 1e-4, (rank, name)


def shard_decision_case(model_path):
    """On 2 SP ranks whose shards change very differently: the relative L1 every rank computes
    (the global one, padding left out) and the DBCache decisions it takes from it."""
    import torch

    from sglang_diffusion.cache.dbcache import DBCache
    from sglang_diffusion.cache.reduce import relative_l1
    from sglang_diffusion.cache.stats import CacheStats
    from sglang_diffusion.distributed.sharding import SequenceShard
    from sglang_diffusion.models.dits.blocks import run_blocks

    resolved, _ = resolve_layout(server_args(model_path, 2, 2, 1, 1), num_heads=2)
    groups = initialize_model_parallel(resolved, ranks=range(2))
    if groups is None:
        return None
    shard = SequenceShard(27, groups)  # 14 tokens on rank 0, 13 + 1 padding on rank 1
    change = 0.01 if shard.index == 0 else 0.5
    previous = torch.ones(1, shard.shard_len, 4)
    current = previous * (1 + change)
    if shard.num_valid < shard.shard_len:
        current[:, shard.num_valid:] = 100.0  # padding: must not count
    diff = relative_l1(previous, current, shard, tokens=True)
    # DBCache: block 0's residual grows by a factor 1 + change per step on this rank; the threshold
    # 0.3 lies between the ranks' own differences
    cache = DBCache(DBCacheParams(residual_diff_threshold=0.3, max_warmup_steps=0, max_continuous_cached_steps=-1),
                    4, CacheStats("test"), shard)
    for step in range(4):
        blocks = [lambda s, k=step: (s[0] + (1 + change) ** k,), lambda s: (s[0] * 2,)]
        run_blocks(blocks, (torch.zeros(1, shard.shard_len, 4),), cache.runner(step, "cond"))
    return diff, cache.stats.skipped


@pytest.mark.parametrize("backend", backends(2))
def test_residual_difference_is_summed_over_the_sp_group(pools, backend, tiny_model):
    results = pools(backend).run(shard_decision_case, tiny_model("wan2.1-t2v"), timeout=300)
    want = (14 * 0.01 + 13 * 0.5) / 27
    (diff0, skipped0), (diff1, skipped1) = results[:2]
    assert diff0 == diff1 and abs(diff0 - want) < 1e-6
    # global differences: step 1 0.25 (reuse), step 2 0.61 against step 0 (compute), step 3 0.34 (compute);
    # each rank alone would reuse steps 1-3 (rank 0, 0.01..0.03) or none (rank 1, 0.5)
    assert skipped0 == skipped1 == 1
