"""The native FLUX.1 and FLUX.2 pipelines with CFG parallelism on 2 gloo ranks (true CFG with a
negative prompt: one branch per rank) give the single-rank latents (fp32, within 1e-4 relative)."""

from __future__ import annotations

import pytest
import torch.distributed as dist

from sglang_diffusion.config.sampling_params import SamplingParams
from sglang_diffusion.distributed.parallel_state import initialize_model_parallel, resolve_layout
from sglang_diffusion.pipelines.registry import build_pipeline
from sglang_diffusion.platform import Platform
from tests.distributed.pool import backends
from tests.distributed.test_wan_parallel import rel_err, server_args

FAMILIES = ("flux.1", "flux.2")
REQUEST = dict(prompt="a red cube", negative_prompt="blurry", true_cfg_scale=3.0, height=48, width=64,
               num_inference_steps=2, seed=7)
LATENT_TOL = 1e-4


def cfg_case(model_paths):
    resolved, _ = resolve_layout(server_args(model_paths[FAMILIES[0]], 2, cfg=2), num_heads=2)
    if initialize_model_parallel(resolved, ranks=range(2)) is None:
        return None
    out = {}
    for family in FAMILIES:
        pipe = build_pipeline(server_args(model_paths[family], 2, cfg=2), Platform.current(dist.get_rank()))
        out[family] = pipe.run(SamplingParams(**REQUEST)).latents.cpu()
        out[family, "describe"] = pipe.describe()["parallel"]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("backend", backends(2))
def test_cfg_parallel_gives_the_single_rank_latents(pools, backend, tiny_model):
    paths = {family: tiny_model(family) for family in FAMILIES}
    want = {family: build_pipeline(server_args(paths[family]), Platform.current()).run(SamplingParams(**REQUEST))
            .latents for family in FAMILIES}
    results = pools(backend).run(cfg_case, paths, timeout=600)
    for rank, per_rank in enumerate(results[:2]):
        for family in FAMILIES:
            assert rel_err(per_rank[family], want[family]) <= LATENT_TOL, (rank, family)
            assert "cfg=2" in per_rank[family, "describe"]
