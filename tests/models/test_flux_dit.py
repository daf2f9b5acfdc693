"""Our FLUX.1 DiT against diffusers' FluxTransformer2DModel on identical random weights (fp32):
dev (guidance embedding) and schnell (none), square and odd token grids, and loading (every
checkpoint key used, every parameter filled, fused projections, bad folders)."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import FluxTransformer2DModel as DiffusersFlux
from safetensors.torch import save_file

from sglang_diffusion.errors import ModelLoadError
from sglang_diffusion.models.dits.flux import (FluxContext, FluxTransformer2DModel, image_ids, pack_latents,
                                               unpack_latents)
from tests.compare import rel_err
from tests.models.dit_pairs import pair_cache

BASE = dict(patch_size=1, in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=24, pooled_projection_dim=12, axes_dims_rope=[4, 6, 6])
VARIANTS = {"dev": dict(BASE, guidance_embeds=True), "schnell": dict(BASE, guidance_embeds=False)}
TOL = 1e-5


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """name -> (diffusers model, our model loaded from its saved folder, folder)."""
    return pair_cache(tmp_path_factory, DiffusersFlux, FluxTransformer2DModel, VARIANTS)


def inputs(config: dict, h: int, w: int, text_len: int = 7):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, h * w, config["in_channels"], generator=g)
    text = torch.randn(2, text_len, config["joint_attention_dim"], generator=g)
    pooled = torch.randn(2, config["pooled_projection_dim"], generator=g)
    t = torch.tensor([0.7, 0.301])
    guidance = torch.full((2,), 3.5) if config["guidance_embeds"] else None
    return dict(hidden_states=x, encoder_hidden_states=text, pooled_projections=pooled, timestep=t,
                img_ids=image_ids(h, w), txt_ids=torch.zeros(text_len, 3), guidance=guidance)


def ours_on_tokens(model, kwargs: dict) -> torch.Tensor:
    """Our DiT called with diffusers' arguments (packed tokens and ids)."""
    context = model.encode_context(kwargs["encoder_hidden_states"], kwargs["pooled_projections"],
                                   kwargs["guidance"], kwargs["txt_ids"])
    cos, sin = model.rope(kwargs["txt_ids"], kwargs["img_ids"])
    return model.forward_tokens(kwargs["hidden_states"], kwargs["timestep"], context, cos, sin)


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("grid", [(4, 4), (3, 5)], ids=["square", "odd"])
def test_forward_equals_diffusers(pair, name, grid):
    ref, ours, _ = pair(name)
    kwargs = inputs(VARIANTS[name], *grid)
    with torch.no_grad():
        expected = ref(**kwargs, return_dict=False)[0]
        got = ours_on_tokens(ours, kwargs)
    assert got.shape == expected.shape
    assert rel_err(expected, got) <= TOL


def test_forward_on_latents_packs_as_diffusers(pair):
    """forward takes unpacked latents [B, C, H, W] and packs them as FluxPipeline does."""
    ref, ours, _ = pair("dev")
    kwargs = inputs(VARIANTS["dev"], 3, 5)
    latents = unpack_latents(kwargs["hidden_states"], 6, 10)  # [B, 4, 6, 10]
    assert torch.equal(pack_latents(latents), kwargs["hidden_states"])
    context = ours.encode_context(kwargs["encoder_hidden_states"], kwargs["pooled_projections"], 3.5)
    with torch.no_grad():
        expected = ref(**kwargs, return_dict=False)[0]
        got = ours(latents, kwargs["timestep"], context)
    assert got.shape == latents.shape and (3, 5) in context.tables
    assert rel_err(expected, pack_latents(got)) <= TOL


def test_kontext_reference_tokens_equal_diffusers(pair):
    """Kontext: the reference image's tokens follow the noise tokens, ids with first axis 1."""
    ref, ours, _ = pair("dev")
    kwargs = inputs(VARIANTS["dev"], 2, 3)
    g = torch.Generator().manual_seed(2)
    kwargs["hidden_states"] = torch.cat([kwargs["hidden_states"], torch.randn(2, 6, 16, generator=g)], dim=1)
    kwargs["img_ids"] = torch.cat([image_ids(2, 3), image_ids(2, 3, first=1.0)])
    with torch.no_grad():
        expected = ref(**kwargs, return_dict=False)[0]
        got = ours_on_tokens(ours, kwargs)
    assert rel_err(expected, got) <= TOL


def test_context_once_equals_per_call_and_branches_batch(pair):
    _, ours, _ = pair("dev")
    kw = inputs(VARIANTS["dev"], 3, 3)
    x, t = unpack_latents(kw["hidden_states"], 6, 6), kw["timestep"]
    ctx = ours.encode_context(kw["encoder_hidden_states"], kw["pooled_projections"], 3.5)
    neg = ours.encode_context(-kw["encoder_hidden_states"], kw["pooled_projections"], 3.5)
    with torch.no_grad():
        direct = ours_on_tokens(ours, kw)
        cond = ours(x, t, ctx)
        two_pass = ours.forward_branches(x, t, [ctx, neg])
        batched = ours.forward_branches(x, t, [ctx, neg], joined=FluxContext.cat([ctx, neg]))
    assert rel_err(direct, pack_latents(cond)) <= TOL
    assert rel_err(cond, two_pass[0]) <= TOL and rel_err(two_pass[1], batched[1]) <= TOL
    assert rel_err(two_pass[0], batched[0]) <= TOL and rel_err(cond, two_pass[1]) > 1e-3


def test_guidance_model_refuses_a_context_without_guidance(pair):
    _, ours, _ = pair("dev")
    kw = inputs(VARIANTS["dev"], 2, 2)
    with pytest.raises(ValueError, match="guidance"):
        ours.encode_context(kw["encoder_hidden_states"], kw["pooled_projections"])


def test_loading_uses_every_key_and_fuses_projections(pair):
    ref, ours, _ = pair("schnell")
    block = ours.single_transformer_blocks[0]
    expected = torch.cat([ref.single_transformer_blocks[0].attn.to_q.weight,
                          ref.single_transformer_blocks[0].attn.to_k.weight,
                          ref.single_transformer_blocks[0].attn.to_v.weight,
                          ref.single_transformer_blocks[0].proj_mlp.weight])
    assert torch.equal(block.to_qkv_mlp.weight, expected)
    assert torch.equal(ours.transformer_blocks[1].attn.add_qkv.bias[-32:],
                       ref.transformer_blocks[1].attn.add_v_proj.bias)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())


def test_bad_checkpoints_are_model_load_errors(pair, tmp_path):
    _, _, folder = pair("schnell")
    from sglang_diffusion.loader.weights import load_state_dict

    state = load_state_dict(folder)
    config = json.loads((folder / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config))
    missing = {k: v for k, v in state.items() if "single_transformer_blocks.1.attn.to_k." not in k}
    save_file(missing, tmp_path / "diffusion_pytorch_model.safetensors")
    with pytest.raises(ModelLoadError, match="fused projection"):
        FluxTransformer2DModel.from_pretrained(tmp_path)
    save_file({**state, "extra.weight": torch.zeros(2)}, tmp_path / "diffusion_pytorch_model.safetensors")
    with pytest.raises(ModelLoadError, match="unused checkpoint keys: extra.weight"):
        FluxTransformer2DModel.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "axes_dims_rope": [4, 4, 4]}))
    with pytest.raises(ModelLoadError, match="axes_dims_rope"):
        FluxTransformer2DModel.from_pretrained(tmp_path)


def test_block_protocol_runner_sees_every_block_and_can_stand_in(pair):
    """A runner gets double- then single-stream blocks as one flat (x, c) -> (x, c) sequence."""
    _, ours, _ = pair("dev")
    kw = inputs(VARIANTS["dev"], 3, 3)
    x, t = unpack_latents(kw["hidden_states"], 6, 6), kw["timestep"]
    ctx = ours.encode_context(kw["encoder_hidden_states"], kw["pooled_projections"], 3.5)

    class Recorder:
        def __init__(self, skip_from=None):
            self.count, self.skip_from = 0, skip_from

        def run(self, blocks, state, signal=None):
            assert signal().shape == (2, 9, 32)  # block 0's modulated image input
            for i, block in enumerate(blocks):
                self.count += 1
                if self.skip_from is None or i < self.skip_from:
                    state = block(state)
            return state

    with torch.no_grad():
        full = ours(x, t, ctx)
        recorder = Recorder()
        assert torch.equal(ours(x, t, ctx, runner=recorder), full) and recorder.count == 4
        assert rel_err(full, ours(x, t, ctx, runner=Recorder(skip_from=2))) > 1e-3
