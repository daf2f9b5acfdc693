"""The native Wan pipelines on several gloo ranks give the single-rank latents (fp32, within 1e-4
relative) for every layout of the issue, on tiny Wan2.1 T2V and Wan2.2 T2V-A14B: sequence
parallelism (Ulysses, ring, USP), CFG parallelism and a tensor-parallel text encoder, with a
token count that divides the ranks and one that does not (48x48: 27 tokens)."""

from __future__ import annotations

import pytest
import torch.distributed as dist

from sglang_diffusion.config.sampling_params import SamplingParams
from sglang_diffusion.config.server_args import ServerArgs
from sglang_diffusion.distributed.parallel_state import initialize_model_parallel, resolve_layout
from sglang_diffusion.pipelines.registry import build_pipeline
from sglang_diffusion.platform import Platform
from tests.distributed.pool import backends

FAMILIES = ("wan2.1-t2v", "wan2.2-t2v-a14b")
BASE = dict(prompt="a red fox in the snow", negative_prompt="blurry", num_frames=9, num_inference_steps=4,
            guidance_scale=5.0, seed=11)
REQUESTS = {"48 tokens": dict(BASE, height=64, width=64), "27 tokens": dict(BASE, height=48, width=48)}
LATENT_TOL = 1e-4

# (num_gpus, ulysses, ring, cfg, tp), as the issue lists them
LAYOUTS = [(2, 2, 1, 1, 1), (2, 1, 2, 1, 1), (4, 2, 2, 1, 1), (2, 1, 1, 2, 1), (2, 1, 1, 1, 2), (4, 2, 1, 2, 1)]


def server_args(model_path, num_gpus=1, ulysses=None, ring=None, cfg=1, tp=1) -> ServerArgs:
    # fp32 everywhere (a GPU's default is bf16): the tolerance is an fp32 one
    return ServerArgs(model_path=str(model_path), backend="sglang", num_gpus=num_gpus, ulysses_degree=ulysses,
                      ring_degree=ring, enable_cfg_parallel=cfg == 2, tp_size=tp, dit_precision="fp32",
                      text_encoder_precisions=["fp32"])


def rel_err(a, b) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def layout_case(layout, model_paths):
    """On ranks 0..num_gpus-1: every family's pipeline on every request -> {(family, request): latents}."""
    world = layout[0]
    resolved, _ = resolve_layout(server_args(model_paths[FAMILIES[0]], *layout), num_heads=2)
    if initialize_model_parallel(resolved, ranks=range(world)) is None:
        return None
    out = {}
    for family in FAMILIES:
        pipe = build_pipeline(server_args(model_paths[family], *layout), Platform.current(dist.get_rank()))
        for name, request in REQUESTS.items():
            out[(family, name)] = pipe.run(SamplingParams(**request)).latents.cpu()
        out[(family, "describe")] = pipe.describe()["parallel"]
    return out


@pytest.fixture(scope="module")
def single_rank(tiny_model):
    """The single-rank latents, the reference."""
    out = {}
    for family in FAMILIES:
        pipe = build_pipeline(server_args(tiny_model(family)), Platform.current())
        for name, request in REQUESTS.items():
            out[(family, name)] = pipe.run(SamplingParams(**request)).latents
    return out


@pytest.mark.slow
@pytest.mark.parametrize("backend", backends(4))
@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda l: "gpus{}-ulysses{}-ring{}-cfg{}-tp{}".format(*l))
def test_every_layout_gives_the_single_rank_latents(pools, backend, layout, tiny_model, single_rank):
    paths = {family: tiny_model(family) for family in FAMILIES}
    results = pools(backend).run(layout_case, layout, paths, timeout=600)
    world = layout[0]
    assert all(r is None for r in results[world:])
    for rank, per_rank in enumerate(results[:world]):
        for key, want in single_rank.items():
            err = rel_err(per_rank[key], want)
            assert err <= LATENT_TOL, (rank, key, err)
        assert f"ulysses={layout[1]} x ring={layout[2]}), cfg={layout[3]}, tp={layout[4]}" in \
            per_rank[(FAMILIES[0], "describe")]
