"""The parallel layout without processes: defaults when only num_gpus is given, refusals, and
which ranks form which group (Ulysses adjacent, ring across, CFG across both, TP in blocks)."""

from __future__ import annotations

import pytest

from sglang_diffusion.config.server_args import ServerArgs
from sglang_diffusion.config.support import check_pipeline_supported, check_supported
from sglang_diffusion.distributed.parallel_state import ParallelLayout, group_rank_lists, resolve_layout
from sglang_diffusion.errors import ConfigError, NotSupportedYetError


def layout(**kw) -> tuple[ParallelLayout, str]:
    heads = kw.pop("heads", 12)
    return resolve_layout(ServerArgs(**kw), num_heads=heads)


def test_only_num_gpus_gives_all_ranks_to_sp_with_ulysses_up_to_the_heads():
    lay, reason = layout(num_gpus=8, heads=12)  # Wan2.1-1.3B: 12 heads; 8 does not divide them
    assert (lay.ulysses, lay.ring, lay.cfg, lay.tp) == (4, 2, 1, 1)
    assert "gcd(8, 12 heads) = 4" in reason
    lay, _ = layout(num_gpus=4, enable_cfg_parallel=True, heads=40)
    assert (lay.ulysses, lay.ring, lay.cfg) == (2, 1, 2)


def test_given_degrees_are_kept_and_the_rest_replicates():
    lay, reason = layout(num_gpus=4, ulysses_degree=2, ring_degree=2)
    assert (lay.ulysses, lay.ring, lay.replicas, reason) == (2, 2, 1, "as given")
    lay, _ = layout(num_gpus=4, sp_degree=2, tp_size=4)
    assert (lay.ulysses, lay.ring, lay.replicas, lay.tp) == (2, 1, 2, 4)
    assert "2 replicas each compute the whole request" in lay.describe()


def test_a_pipeline_that_cannot_split_replicates_and_says_so():
    lay, reason = resolve_layout(ServerArgs(num_gpus=2), num_heads=None, sequence_parallel=False)
    assert (lay.sp, lay.replicas) == (1, 2) and "replicate" in reason


def test_ulysses_degree_that_does_not_divide_the_heads_is_refused_with_a_fix():
    with pytest.raises(ConfigError, match=r"ulysses_degree 4 does not divide the DiT's 2 attention heads.*"
                                          r"--ulysses-degree 2 --ring-degree 2"):
        layout(num_gpus=4, ulysses_degree=4, heads=2)


def test_groups_of_a_usp_layout_with_cfg():
    lists = group_rank_lists(ParallelLayout(8, tp=2, ulysses=2, ring=2, cfg=2))
    assert lists["ulysses"] == [(0, 1), (2, 3), (4, 5), (6, 7)]
    assert lists["ring"] == [(0, 2), (1, 3), (4, 6), (5, 7)]
    assert lists["sp"] == [(0, 1, 2, 3), (4, 5, 6, 7)]
    assert lists["cfg"] == [(0, 4), (1, 5), (2, 6), (3, 7)]
    assert lists["tp"] == [(0, 1), (2, 3), (4, 5), (6, 7)]


def test_multi_node_options_are_checked():
    with pytest.raises(ConfigError, match="needs dist_init_addr"):
        ServerArgs(num_gpus=4, nnodes=2, node_rank=1)
    with pytest.raises(ConfigError, match=r"nnodes \(3\) does not divide num_gpus \(4\)"):
        ServerArgs(num_gpus=4, nnodes=3, dist_init_addr="h:1")
    with pytest.raises(ConfigError, match="node_rank must be in"):
        ServerArgs(num_gpus=4, nnodes=2, node_rank=2, dist_init_addr="h:1")


def test_num_gpus_defaults_to_torchruns_world_size(monkeypatch):
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "x")
    monkeypatch.setenv("WORLD_SIZE", "4")
    args = ServerArgs()
    assert args.num_gpus == 4 and args.under_torchrun


class _DiffusersPipeline:
    lora = None

    def describe(self):
        return {"backend": "diffusers"}


def test_parallel_options_pass_for_native_pipelines_and_are_refused_on_the_diffusers_backend():
    args = ServerArgs(num_gpus=4, ulysses_degree=2, ring_degree=2, enable_cfg_parallel=False, tp_size=2)
    check_supported(args)  # native pipelines take them
    with pytest.raises(NotSupportedYetError, match=r"sequence parallelism .*tp_size=2 .* on the diffusers backend"):
        check_pipeline_supported(args, _DiffusersPipeline())
    check_pipeline_supported(ServerArgs(num_gpus=2), _DiffusersPipeline())  # replicas are fine


def test_vae_sp_is_supported_by_native_pipelines_and_refused_on_the_diffusers_backend():
    args = ServerArgs(num_gpus=2, ulysses_degree=2, vae_tiling=True, vae_sp=True)
    check_supported(args)
    with pytest.raises(ConfigError, match="vae_sp .* native pipelines only, not on the diffusers backend"):
        check_pipeline_supported(ServerArgs(vae_sp=True), _DiffusersPipeline())


class _Backend:
    def __init__(self, name, returns_lse):
        self.name, self.returns_lse = name, returns_lse


def test_ring_refuses_a_named_backend_without_lse_and_auto_switches_to_fa():
    from sglang_diffusion.distributed.sharding import backend_for_ring

    fa = _Backend("fa", True)
    assert backend_for_ring(fa, "fa", lambda name: None) is fa
    assert backend_for_ring(_Backend("torch_sdpa", False), "auto", lambda name: _Backend(name, True)).name == "fa"
    with pytest.raises(ConfigError, match="attention_backend torch_sdpa: ring attention .* log-sum-exp"):
        backend_for_ring(_Backend("torch_sdpa", False), "torch_sdpa", lambda name: fa)
