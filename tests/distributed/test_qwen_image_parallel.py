"""The native Qwen-Image pipeline on 2 gloo ranks with CFG parallelism (the conditional and the
negative-prompt branch of true CFG on one rank each, combined once a step with Qwen's norm
rescale) gives the single-rank latents (sequence parallelism: test_image_sequence_parallel.py)."""

from __future__ import annotations

import pytest
import torch.distributed as dist

from sglang_diffusion.config.sampling_params import SamplingParams
from sglang_diffusion.config.server_args import ServerArgs
from sglang_diffusion.distributed.parallel_state import initialize_model_parallel, resolve_layout
from sglang_diffusion.pipelines.registry import build_pipeline
from sglang_diffusion.platform import Platform
from tests.distributed.pool import backends

REQUEST = dict(prompt="a red fox in the snow", negative_prompt="blurry", height=48, width=64, num_inference_steps=3,
               true_cfg_scale=4.0, seed=11)
LATENT_TOL = 1e-4


def server_args(model_path, num_gpus=1, cfg=1) -> ServerArgs:
    return ServerArgs(model_path=str(model_path), backend="sglang", num_gpus=num_gpus, enable_cfg_parallel=cfg == 2,
                      dit_precision="fp32", text_encoder_precisions=["fp32"])


def cfg_parallel_case(model_path):
    resolved, _ = resolve_layout(server_args(model_path, 2, cfg=2), num_heads=2)
    if initialize_model_parallel(resolved, ranks=range(2)) is None:
        return None
    pipe = build_pipeline(server_args(model_path, 2, cfg=2), Platform.current(dist.get_rank()))
    return pipe.run(SamplingParams(**REQUEST)).latents.cpu(), pipe.describe()["parallel"]


@pytest.mark.slow
@pytest.mark.parametrize("backend", backends(2))
def test_cfg_parallel_on_two_ranks_gives_the_single_rank_latents(pools, backend, tiny_model):
    model = tiny_model("qwen-image")
    want = build_pipeline(server_args(model), Platform.current()).run(SamplingParams(**REQUEST)).latents
    results = pools(backend).run(cfg_parallel_case, model, timeout=600)
    for rank, (latents, parallel) in enumerate(r for r in results[:2]):
        assert ((latents - want).norm() / want.norm()).item() <= LATENT_TOL, rank
        assert "cfg=2" in parallel
    assert all(r is None for r in results[2:])
