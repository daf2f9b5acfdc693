"""Our image DiTs under sequence parallelism on 2 and 4 gloo ranks (Ulysses, ring, USP) equal the
single rank (fp32, 1e-5 relative) where the pipeline tests do not reach: an edit's reference
tokens sharded with the image's (Qwen-Image-Edit, with zero_cond_t's clean modulation of them as
in Qwen-Image-Edit-2511; FLUX.1 Kontext), and padded text masked through the key bias, on 15 + 6
tokens (which divide neither 2 nor 4 ranks). Each rank's prediction is right at its own tokens
and zero elsewhere, so the ranks' sum is the whole prediction."""

from __future__ import annotations

import pytest
import torch
from diffusers import FluxTransformer2DModel as DiffusersFlux
from diffusers import QwenImageTransformer2DModel as DiffusersQwenImage

from sglang_diffusion.distributed.parallel_state import ParallelLayout, initialize_model_parallel
from sglang_diffusion.distributed.sharding import SequenceShard
from sglang_diffusion.models.dits.flux import FluxTransformer2DModel, image_ids, pack_latents
from sglang_diffusion.models.dits.qwen_image import QwenImageTransformer2DModel
from tests.distributed.test_wan_parallel import rel_err
from tests.models.dit_pairs import saved_pair

MODELS = {  # family -> (diffusers class, ours, config)
    "qwen-image": (DiffusersQwenImage, QwenImageTransformer2DModel, dict(
        patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=24, axes_dims_rope=[4, 6, 6], zero_cond_t=True)),
    "flux.1": (DiffusersFlux, FluxTransformer2DModel, dict(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=2, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=24, pooled_projection_dim=12, axes_dims_rope=[4, 6, 6], guidance_embeds=True)),
}
TOL = 1e-5
LAYOUTS = [(2, 2, 1), (2, 1, 2), (4, 2, 2)]  # (ranks, ulysses, ring)


def qwen_cases(model, shard) -> dict:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 1, 6, 10, generator=g)  # 3 x 5 tokens
    refs = [torch.randn(2, 4, 1, 4, 6, generator=g)]  # 2 x 3 tokens
    text = torch.randn(2, 5, 24, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])  # the second prompt padded: masked keys
    t = torch.tensor([400.0, 900.0])
    return {"qwen edit, masked text": model(x, t, context=model.encode_context(text, refs, mask), seq=shard(15 + 6)),
            "qwen text to image": model(x, t, context=model.encode_context(text), seq=shard(15))}


def flux_cases(model, shard) -> dict:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 6, 10, generator=g)  # 3 x 5 tokens
    reference = pack_latents(torch.randn(1, 4, 4, 6, generator=g))  # Kontext's input image: 2 x 3 tokens
    text, pooled = torch.randn(2, 7, 24, generator=g), torch.randn(2, 12, generator=g)
    t = torch.tensor([0.7, 0.301])
    kontext = model.encode_context(text, pooled, 3.5, reference=reference, reference_ids=image_ids(2, 3, first=1.0))
    return {"flux kontext": model(x, t, kontext, seq=shard(15 + 6)),
            "flux text to image": model(x, t, model.encode_context(text, pooled, 3.5), seq=shard(15))}


CASES = {"qwen-image": qwen_cases, "flux.1": flux_cases}


def predictions(folders: dict, groups=None) -> dict:
    """Every case's prediction; under `groups` over the shard of the case's tokens."""

    def shard(tokens):
        return None if groups is None else SequenceShard(tokens, groups)

    out = {}
    with torch.no_grad():
        for family, folder in folders.items():
            out.update(CASES[family](MODELS[family][1].from_pretrained(folder), shard))
    return out


def layout_case(layout, folders):
    world, ulysses, ring = layout
    groups = initialize_model_parallel(ParallelLayout(world, ulysses=ulysses, ring=ring), ranks=range(world))
    return None if groups is None else predictions(folders, groups)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    out = {}
    for family, (ref_cls, ours_cls, config) in MODELS.items():
        out[family] = tmp_path_factory.mktemp(f"sp_dit_{family}")
        saved_pair(ref_cls, ours_cls, config, out[family], std=0.3)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda l: "ranks{}-ulysses{}-ring{}".format(*l))
def test_sharded_forward_sums_to_the_single_rank_prediction(pools, layout, folders):
    want = predictions(folders)
    results = pools("gloo").run(layout_case, layout, folders, timeout=600)
    for name, expected in want.items():
        parts = [r[name] for r in results[:layout[0]]]
        if "text to image" in name:  # every rank owns image tokens (an edit's last rank may own references only)
            assert all(p.abs().sum() > 0 for p in parts), name
        assert rel_err(sum(parts), expected) <= TOL, name
