"""Our HunyuanVideo DiT against diffusers' HunyuanVideoTransformer3DModel on identical random
weights (fp32), with unpadded and padded text (padding must not change the output), prompts of
different lengths in one batch, and loading (every key used, every parameter filled)."""

from __future__ import annotations

import pytest
import torch
from diffusers import HunyuanVideoTransformer3DModel as DiffusersHunyuan

from sglang_diffusion.errors import ModelLoadError
from sglang_diffusion.models.dits.hunyuan_video import (HunyuanContext, HunyuanVideoConfig,
                                                        HunyuanVideoTransformer3DModel, TextConditioning)
from tests.compare import rel_err
from tests.models.dit_pairs import saved_pair

CONFIG = dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=2,
              num_single_layers=2, num_refiner_layers=2, mlp_ratio=2.0, patch_size=2, patch_size_t=1,
              qk_norm="rms_norm", guidance_embeds=True, text_embed_dim=24, pooled_projection_dim=12,
              rope_theta=256.0, rope_axes_dim=(4, 6, 6))
TOL = 1e-5


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(diffusers model, ours loaded from its saved folder)."""
    return saved_pair(DiffusersHunyuan, HunyuanVideoTransformer3DModel, CONFIG, tmp_path_factory.mktemp("hunyuan"))


def inputs(batch=1, frames=2, size=8, length=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return dict(hidden_states=torch.randn(batch, 4, frames, size, size, generator=g),
                timestep=torch.full((batch,), 700.0),
                encoder_hidden_states=torch.randn(batch, length, 24, generator=g),
                encoder_attention_mask=torch.ones(batch, length),
                pooled_projections=torch.randn(batch, 12, generator=g),
                guidance=torch.full((batch,), 6000.0))


def padded(kw: dict, to: int, lengths: list[int]) -> dict:
    """The same prompts, each cut to its length and zero-padded to `to` tokens, with their mask."""
    out = dict(kw)
    states = torch.zeros(kw["encoder_hidden_states"].shape[0], to, 24)
    mask = torch.zeros(states.shape[:2])
    for i, n in enumerate(lengths):
        states[i, :n] = kw["encoder_hidden_states"][i, :n]
        mask[i, :n] = 1
    out.update(encoder_hidden_states=states, encoder_attention_mask=mask)
    return out


def run_ref(ref, kw):
    with torch.no_grad():
        return ref(**kw, return_dict=False)[0]


def run_ours(ours, kw):
    with torch.no_grad():
        return ours(**kw)


def test_equals_diffusers_unpadded(pair):
    ref, ours = pair
    kw = inputs(frames=3, size=6)
    assert rel_err(run_ref(ref, kw), run_ours(ours, kw)) <= TOL


def test_padded_text_equals_diffusers_and_does_not_change_the_output(pair):
    ref, ours = pair
    kw = inputs(length=5)
    expected = run_ref(ref, kw)  # 5 real tokens, no padding
    pad = padded(kw, 11, [5])
    assert rel_err(expected, run_ref(ref, pad)) <= TOL  # diffusers' own masking
    assert rel_err(expected, run_ours(ours, pad)) <= TOL


def test_batch_with_prompts_of_different_lengths(pair):
    ref, ours = pair
    kw = padded(inputs(batch=2, length=7), 9, [7, 3])
    assert rel_err(run_ref(ref, kw), run_ours(ours, kw)) <= TOL


def test_context_and_branches_equal_forward(pair):
    _, ours = pair
    a, b = inputs(length=4, seed=2), padded(inputs(length=6, seed=3), 8, [6])
    ctx = [ours.encode_context(TextConditioning(k["encoder_hidden_states"], k["encoder_attention_mask"],
                                                k["pooled_projections"], k["guidance"])) for k in (a, b)]
    assert HunyuanContext.cat(ctx) is None  # 4 and 6 tokens: two passes
    x, t = a["hidden_states"], a["timestep"]
    with torch.no_grad():
        two = ours.forward_branches(x, t, ctx)
        same = ours.forward_branches(x, t, [ctx[0], ctx[0]], joined=HunyuanContext.cat([ctx[0], ctx[0]]))
    assert rel_err(run_ours(ours, a), two[0]) <= TOL and rel_err(run_ours(ours, dict(b, hidden_states=x)),
                                                                  two[1]) <= TOL
    assert rel_err(two[0], same[0]) <= TOL and rel_err(two[0], same[1]) <= TOL


def test_without_guidance_embedding(tmp_path):
    torch.manual_seed(0)
    ref = DiffusersHunyuan(**dict(CONFIG, guidance_embeds=False, num_layers=1, num_single_layers=1)).eval()
    ref.save_pretrained(tmp_path)
    ours = HunyuanVideoTransformer3DModel.from_pretrained(tmp_path)
    kw = dict(inputs(), guidance=None)
    assert rel_err(run_ref(ref, kw), run_ours(ours, kw)) <= TOL


def test_config_and_loading_errors(pair, tmp_path):
    _, ours = pair
    assert ours.config.patch_size == (1, 2, 2) and ours.config.ffn_dim == 64
    with pytest.raises(ModelLoadError, match="image_condition_type"):
        HunyuanVideoConfig.from_dict(dict(CONFIG, image_condition_type="token_replace"))
    with pytest.raises(ModelLoadError, match="rope_axes_dim"):
        HunyuanVideoConfig.from_dict(dict(CONFIG, rope_axes_dim=[4, 4, 4]))
    state = {k: v for k, v in pair[0].state_dict().items() if "single_transformer_blocks.1.proj_out" not in k}
    with torch.device("meta"):
        empty = HunyuanVideoTransformer3DModel(ours.config)
    with pytest.raises(ModelLoadError, match="parameters without weights: single_transformer_blocks.1.proj_out"):
        empty.load_checkpoint(state, torch.float32)
    with pytest.raises(ValueError, match="right-padded"):
        run_ours(ours, dict(inputs(), encoder_attention_mask=torch.tensor([[0.0, 1, 1, 1, 1, 1]])))
