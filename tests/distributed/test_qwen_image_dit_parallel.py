"""Our Qwen-Image DiT under sequence parallelism on 2 and 4 gloo ranks (Ulysses, ring, USP) equals
the single rank (fp32, 1e-5 relative) where the pipeline tests do not reach: an edit's reference
tokens sharded with the image's and modulated as clean (zero_cond_t, Qwen-Image-Edit-2511), and
padded text masked through the key bias, on 15 + 6 tokens (which divide neither 2 nor 4 ranks).
Each rank's prediction is right at its own tokens and zero elsewhere, so the ranks' sum is the
whole prediction."""

from __future__ import annotations

import pytest
import torch

from sglang_diffusion.distributed.parallel_state import ParallelLayout, initialize_model_parallel
from sglang_diffusion.distributed.sharding import SequenceShard
from sglang_diffusion.models.dits.qwen_image import QwenImageTransformer2DModel
from tests.distributed.test_wan_parallel import rel_err
from tests.models.dit_pairs import saved_pair

CONFIG = dict(patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16,
              num_attention_heads=2, joint_attention_dim=24, axes_dims_rope=[4, 6, 6], zero_cond_t=True)
TOL = 1e-5
LAYOUTS = [(2, 2, 1), (2, 1, 2), (4, 2, 2)]  # (ranks, ulysses, ring)


def inputs():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 1, 6, 10, generator=g)  # 3 x 5 tokens
    refs = [torch.randn(2, 4, 1, 4, 6, generator=g)]  # 2 x 3 tokens
    text = torch.randn(2, 5, 24, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])  # the second prompt padded: masked keys
    return x, refs, text, mask, torch.tensor([400.0, 900.0])


def forward(model, groups=None) -> dict:
    """The prediction of each case; under `groups` over the shard of the case's tokens."""
    x, refs, text, mask, t = inputs()

    def shard(tokens):
        return None if groups is None else SequenceShard(tokens, groups)

    with torch.no_grad():
        return {"edit, masked text": model(x, t, context=model.encode_context(text, refs, mask), seq=shard(15 + 6)),
                "text to image": model(x, t, context=model.encode_context(text), seq=shard(15))}


def layout_case(layout, folder):
    world, ulysses, ring = layout
    groups = initialize_model_parallel(ParallelLayout(world, ulysses=ulysses, ring=ring), ranks=range(world))
    if groups is None:
        return None
    return forward(QwenImageTransformer2DModel.from_pretrained(folder), groups)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from diffusers import QwenImageTransformer2DModel as DiffusersQwenImage

    path = tmp_path_factory.mktemp("qwen_sp_dit")
    saved_pair(DiffusersQwenImage, QwenImageTransformer2DModel, CONFIG, path, std=0.3)
    return path


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda l: "ranks{}-ulysses{}-ring{}".format(*l))
def test_sharded_forward_sums_to_the_single_rank_prediction(pools, layout, folder):
    want = forward(QwenImageTransformer2DModel.from_pretrained(folder))
    results = pools("gloo").run(layout_case, layout, folder, timeout=300)
    for name, expected in want.items():
        parts = [r[name] for r in results[:layout[0]]]
        if name == "text to image":  # every rank owns some image tokens (the edit's last rank: references only)
            assert all(p.abs().sum() > 0 for p in parts)
        assert rel_err(sum(parts), expected) <= TOL, name
