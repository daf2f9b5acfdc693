"""The native FLUX.1, FLUX.2 and Qwen-Image pipelines under sequence parallelism on 2 and 4 gloo
ranks (Ulysses, ring, USP, and SP x CFG parallel over true CFG's branches) give the single-rank
latents (fp32, within 1e-4 relative): image tokens split over the ranks, text replicated, on 15
image tokens (48x80), which divide neither 2 nor 4 ranks. FLUX.2 edits with a reference image
(its tokens sharded with the image's); Qwen-Image's guidance runs batched, so its two prompts of
different lengths attend through the text-key bias. Step caching (DBCache, and TeaCache on FLUX.1)
takes the single rank's decisions on every SP rank."""

from __future__ import annotations

import numpy as np
import pytest
import torch.distributed as dist
from PIL import Image

from sglang_diffusion.cache import Caching
from sglang_diffusion.config.cache import CacheDitParams, DBCacheParams
from sglang_diffusion.config.sampling_params import SamplingParams
from sglang_diffusion.distributed.parallel_state import initialize_model_parallel, resolve_layout
from sglang_diffusion.pipelines.registry import build_pipeline
from sglang_diffusion.pipelines.stages.denoising import CfgLayout, DenoisingStage
from sglang_diffusion.platform import Platform
from tests.distributed.test_wan_parallel import rel_err, server_args

REQUEST = dict(prompt="a red cube on a wooden table", negative_prompt="blurry", true_cfg_scale=3.0, height=48,
               width=80, num_inference_steps=2, seed=7)
# case -> (family, CFG layout, with a reference image)
CASES = {"flux.1": ("flux.1", "two_pass", False), "flux.2 edit": ("flux.2", "two_pass", True),
         "qwen-image": ("qwen-image", "batched", False)}
LATENT_TOL = 1e-4
# (num_gpus, ulysses, ring, cfg)
LAYOUTS = [(2, 2, 1, 1), (2, 1, 2, 1), (4, 2, 2, 1), (4, 2, 1, 2)]


@pytest.fixture(scope="module")
def reference_image(tmp_path_factory):
    path = tmp_path_factory.mktemp("sp_refs") / "ref.png"
    Image.fromarray((np.random.default_rng(0).random((64, 80, 3)) * 255).astype(np.uint8)).save(path)
    return str(path)


def run_cases(paths: dict, image: str, layout=(1, None, None, 1)) -> dict:
    """Every case on this rank -> {case: latents}."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    out = {}
    for name, (family, cfg, edit) in CASES.items():
        pipe = build_pipeline(server_args(paths[family], *layout), Platform.current(rank))
        next(s for s in pipe.stages if isinstance(s, DenoisingStage)).cfg = CfgLayout(cfg)
        out[name] = pipe.run(SamplingParams(**REQUEST, image_path=image if edit else None)).latents.cpu()
        out[name, "describe"] = pipe.describe()["parallel"]
    return out


def layout_case(layout, paths, image):
    resolved, _ = resolve_layout(server_args(paths["flux.1"], *layout), num_heads=2)
    if initialize_model_parallel(resolved, ranks=range(layout[0])) is None:
        return None
    return run_cases(paths, image, layout)


@pytest.fixture(scope="module")
def single_rank(tiny_model, reference_image):
    paths = {family: tiny_model(family) for family, _, _ in CASES.values()}
    return paths, run_cases(paths, reference_image)


@pytest.mark.slow
@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda l: "gpus{}-ulysses{}-ring{}-cfg{}".format(*l))
def test_every_layout_gives_the_single_rank_latents(pools, layout, single_rank, reference_image):
    paths, want = single_rank
    results = pools("gloo").run(layout_case, layout, paths, reference_image, timeout=600)
    world = layout[0]
    assert all(r is None for r in results[world:])
    for rank, per_rank in enumerate(results[:world]):
        for name in CASES:
            err = rel_err(per_rank[name], want[name])
            assert err <= LATENT_TOL, (rank, name, err)
            assert f"ulysses={layout[1]} x ring={layout[2]}), cfg={layout[3]}" in per_rank[name, "describe"]


# ---- step caching under SP ------------------------------------------------------------------

# case -> (family, DBCache threshold or None, request fields): thresholds between the tiny
# models' residual differences over 8 steps, so that the decisions are mixed
CACHE_CASES = {"flux.1 dbcache": ("flux.1", 0.3, {}),
               "flux.1 teacache": ("flux.1", None, dict(enable_teacache=True, teacache_thresh=0.3)),
               "qwen-image dbcache": ("qwen-image", 0.4, {})}


def run_cache_cases(paths: dict, layout=(1, None, None, 1)) -> dict:
    """Every caching case on this rank -> {case: (latents, the cache's report)}."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    pipes, out = {}, {}
    for name, (family, threshold, fields) in CACHE_CASES.items():
        if family not in pipes:
            pipes[family] = build_pipeline(server_args(paths[family], *layout), Platform.current(rank))
        stage = next(s for s in pipes[family].stages if isinstance(s, DenoisingStage))
        stage.cfg = CfgLayout("two_pass")
        stage.caching = Caching(None if threshold is None else CacheDitParams(DBCacheParams(
            Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=threshold, max_warmup_steps=1,
            max_continuous_cached_steps=-1)))
        state = pipes[family].run(SamplingParams(**dict(REQUEST, num_inference_steps=8), **fields))
        out[name] = (state.latents.cpu(), state.cache_stats.describe())
    return out


def cache_case(layout, paths):
    resolved, _ = resolve_layout(server_args(paths["flux.1"], *layout), num_heads=2)
    if initialize_model_parallel(resolved, ranks=range(layout[0])) is None:
        return None
    return run_cache_cases(paths, layout)


@pytest.mark.slow
@pytest.mark.parametrize("layout", LAYOUTS[:2], ids=lambda l: "gpus{}-ulysses{}-ring{}-cfg{}".format(*l))
def test_step_caching_takes_the_single_rank_decisions(pools, layout, single_rank):
    paths, _ = single_rank
    single = run_cache_cases(paths)
    for name, (_, report) in single.items():  # mixed decisions: some block-steps skipped, not all
        assert " 0 skipped" not in report and " 0 computed" not in report, (name, report)
    results = pools("gloo").run(cache_case, layout, paths, timeout=600)
    for rank, per_rank in enumerate(results[:layout[0]]):
        for name, (latents, report) in single.items():
            got, got_report = per_rank[name]
            assert got_report == report, (rank, name, got_report, report)
            assert rel_err(got, latents) <= LATENT_TOL, (rank, name)
