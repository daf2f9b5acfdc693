"""Our FLUX.2 DiT against diffusers' Flux2Transformer2DModel on identical random weights (fp32):
square and odd latent grids, with and without guidance embedding, reference image tokens
(editing), and loading (every key used, fused projections)."""

from __future__ import annotations

import pytest
import torch
from diffusers import Flux2Transformer2DModel as DiffusersFlux2

from sglang_diffusion.models.dits.flux2 import Flux2Context, Flux2Transformer2DModel, latent_ids, text_ids
from tests.compare import rel_err
from tests.models.dit_pairs import pair_cache

BASE = dict(patch_size=1, in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=24, timestep_guidance_channels=32, mlp_ratio=3.0,
            axes_dims_rope=[4, 4, 4, 4], rope_theta=2000, eps=1e-6)
VARIANTS = {"dev": dict(BASE, guidance_embeds=True), "no_guidance": dict(BASE, guidance_embeds=False)}
TOL = 1e-5


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """name -> (diffusers model, our model loaded from its saved folder)."""
    get = pair_cache(tmp_path_factory, DiffusersFlux2, Flux2Transformer2DModel, VARIANTS)
    return lambda name: get(name)[:2]


def inputs(config: dict, h: int, w: int, length: int = 7):
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(2, config["in_channels"], h, w, generator=g)
    text = torch.randn(2, length, config["joint_attention_dim"], generator=g)
    t = torch.tensor([0.7, 0.301])
    guidance = torch.full((2,), 4.0) if config["guidance_embeds"] else None
    return latents, text, t, guidance


def diffusers_call(ref, latents, text, t, guidance, reference=None, reference_ids=None):
    tokens = latents.flatten(2).transpose(1, 2)  # [B, H*W, C]
    ids = latent_ids(*latents.shape[2:])
    if reference is not None:
        tokens = torch.cat([tokens, reference.expand(tokens.shape[0], -1, -1)], dim=1)
        ids = torch.cat([ids, reference_ids])
    out = ref(tokens, text, t, ids, text_ids(text.shape[1]), guidance, return_dict=False)[0]
    out = out[:, : latents.shape[2] * latents.shape[3]]
    return out.transpose(1, 2).reshape(latents.shape)


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("grid", [(4, 4), (3, 5)], ids=["square", "odd"])
def test_forward_equals_diffusers(pair, name, grid):
    ref, ours = pair(name)
    latents, text, t, guidance = inputs(VARIANTS[name], *grid)
    context = ours.encode_context(text, guidance)
    with torch.no_grad():
        expected = diffusers_call(ref, latents, text, t, guidance)
        got = ours(latents.unsqueeze(2), t, context).squeeze(2)  # the pipelines' [B, C, 1, H, W]
    assert got.shape == expected.shape
    assert rel_err(expected, got) <= TOL


@pytest.mark.parametrize("count", [1, 2])
def test_reference_image_tokens_equal_diffusers(pair, count):
    ref, ours = pair("dev")
    latents, text, t, guidance = inputs(VARIANTS["dev"], 3, 4)
    g = torch.Generator().manual_seed(3)
    grids = [(2, 3), (3, 2)][:count]
    reference = torch.cat([torch.randn(1, h * w, 16, generator=g) for h, w in grids], dim=1)
    reference_ids = torch.cat([latent_ids(h, w, t=10 + 10 * i) for i, (h, w) in enumerate(grids)])
    context = ours.encode_context(text, guidance, reference, reference_ids)
    with torch.no_grad():
        expected = diffusers_call(ref, latents, text, t, guidance, reference, reference_ids)
        got = ours(latents, t, context)
    assert rel_err(expected, got) <= TOL


def test_branches_batch_and_loading_fuses_projections(pair):
    ref, ours = pair("dev")
    latents, text, t, guidance = inputs(VARIANTS["dev"], 3, 3)
    ctx, neg = ours.encode_context(text, 4.0), ours.encode_context(-text, 4.0)
    with torch.no_grad():
        two_pass = ours.forward_branches(latents, t, [ctx, neg])
        batched = ours.forward_branches(latents, t, [ctx, neg], joined=Flux2Context.cat([ctx, neg]))
    assert rel_err(two_pass[0], batched[0]) <= TOL and rel_err(two_pass[1], batched[1]) <= TOL
    expected = torch.cat([ref.transformer_blocks[0].attn.to_q.weight, ref.transformer_blocks[0].attn.to_k.weight,
                          ref.transformer_blocks[0].attn.to_v.weight])
    assert torch.equal(ours.transformer_blocks[0].attn.to_qkv.weight, expected)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())
