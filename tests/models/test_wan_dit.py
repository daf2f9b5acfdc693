"""Our Wan DiT against diffusers' WanTransformer3DModel on identical random weights (fp32), and
loading: the key map uses every checkpoint key and fills every parameter, shards, bad folders."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import WanTransformer3DModel as DiffusersWan
from safetensors.torch import save_file

from sglang_diffusion.errors import ModelLoadError
from sglang_diffusion.models.dits.wan import WanConfig, WanContext, WanTransformer3DModel, map_checkpoint_key
from tests.compare import rel_err
from tests.models.dit_pairs import pair_cache

BASE = dict(patch_size=[1, 2, 2], num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
            text_dim=16, freq_dim=32, ffn_dim=24, num_layers=2, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", eps=1e-6)
VARIANTS = {
    "t2v": BASE,
    "i2v": dict(BASE, in_channels=9, image_dim=20, added_kv_proj_dim=24),  # CLIP tokens, extra K/V
    "ti2v": dict(BASE, in_channels=8, out_channels=8),  # per-token timesteps
    "no_cross_attn_norm": dict(BASE, cross_attn_norm=False, qk_norm=None),
}
TOL = 1e-5


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """name -> (diffusers model, our model loaded from its saved folder, folder)."""
    return pair_cache(tmp_path_factory, DiffusersWan, WanTransformer3DModel, VARIANTS, std=0.3)


def inputs(config: dict, frames: int, height: int, width: int, image: bool = False, per_token: bool = False):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, config["in_channels"], frames, height, width, generator=g)
    # diffusers' I2V attention splits the context at 512 text tokens, so I2V needs 512 of them
    text = torch.randn(2, 512 if image else 7, config["text_dim"], generator=g)
    img = torch.randn(2, 5, config["image_dim"], generator=g) if image else None
    if per_token:  # TI2V with an image: the first frame's tokens at t = 0
        tokens = frames * (height // 2) * (width // 2)
        t = torch.full((2, tokens), 700.0)
        t[:, : (height // 2) * (width // 2)] = 0.0
    else:
        t = torch.tensor([700.0, 301.0])
    return x, t, text, img


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("size", [(3, 10, 14), (2, 9, 7)], ids=["even", "odd_rounded_down"])
def test_forward_equals_diffusers(pair, name, size):
    ref, ours, _ = pair(name)
    x, t, text, img = inputs(VARIANTS[name], *size, image=name == "i2v", per_token=name == "ti2v")
    with torch.no_grad():
        expected = ref(x, t, text, img, return_dict=False)[0]
        got = ours(x, t, text, img)
    assert got.shape == expected.shape
    assert rel_err(expected, got) <= TOL


def test_context_computed_once_equals_per_call_and_batches(pair):
    _, ours, _ = pair("i2v")
    x, t, text, img = inputs(VARIANTS["i2v"], 3, 10, 14, image=True)
    with torch.no_grad():
        per_call = ours(x, t, text, img)
        context = ours.encode_context(text, img)
        assert torch.equal(ours(x, t, context=context), per_call)
        halves = [ours.encode_context(text[i:i + 1], img[i:i + 1]) for i in range(2)]
        joined = ours(x, t, context=WanContext.cat(halves))
    assert rel_err(per_call, joined) <= TOL


@pytest.mark.parametrize("name", VARIANTS)
def test_branches_share_the_first_self_attention_and_equal_separate_forwards(pair, name):
    """Classifier-free guidance: the latents and timestep are the same in both branches, so
    `forward_branches` runs block 0's self-attention once; each branch still equals its own
    forward, in two passes (bit for bit) and batched (to rounding)."""
    _, ours, _ = pair(name)
    x, t, text, img = inputs(VARIANTS[name], 3, 10, 14, image=name == "i2v", per_token=name == "ti2v")
    x, t = x[:1], t[:1]
    with torch.no_grad():
        contexts = [ours.encode_context(text[i:i + 1], None if img is None else img[i:i + 1]) for i in range(2)]
        separate = [ours(x, t, context=c) for c in contexts]
        assert not torch.allclose(separate[0], separate[1])  # the prompts matter
        calls = []
        hook = ours.blocks[0].attn1.register_forward_hook(lambda *_: calls.append(1))
        try:
            two_pass = ours.forward_branches(x, t, contexts)
            assert len(calls) == 1
            batched = ours.forward_branches(x, t, contexts, joined=WanContext.cat(contexts))
            assert len(calls) == 2
        finally:
            hook.remove()
    for got_two_pass, got_batched, expected in zip(two_pass, batched, separate):
        assert torch.equal(got_two_pass, expected)
        assert rel_err(expected, got_batched) <= TOL


def test_loading_uses_every_checkpoint_key_and_fills_every_parameter(pair):
    for name in VARIANTS:
        ref, ours, _ = pair(name)
        state = ref.state_dict()
        ours_params = dict(ours.named_parameters())
        mapped = {map_checkpoint_key(k) for k in state}
        assert mapped == set(ours_params), name
        for key, tensor in state.items():
            assert torch.equal(ours_params[map_checkpoint_key(key)], tensor), key


def test_every_size_comes_from_config_json(pair):
    _, ours, folder = pair("i2v")
    config = json.loads((folder / "config.json").read_text())
    assert ours.config == WanConfig.from_dict(config)
    assert len(ours.blocks) == config["num_layers"]
    assert ours.blocks[0].ffn.fc_in.out_features == config["ffn_dim"]
    assert ours.condition_embedder.image_embedder.norm1.normalized_shape == (config["image_dim"],)


def test_sharded_checkpoint_with_index_loads(pair, tmp_path):
    ref, ours, folder = pair("t2v")
    state = {k: v.contiguous() for k, v in ref.state_dict().items()}
    keys = sorted(state)
    shards = {"a.safetensors": keys[: len(keys) // 2], "b.safetensors": keys[len(keys) // 2:]}
    for file, names in shards.items():
        save_file({k: state[k] for k in names}, tmp_path / file)
    index = {"weight_map": {k: f for f, names in shards.items() for k in names}}
    (tmp_path / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    sharded = WanTransformer3DModel.from_pretrained(tmp_path)
    for (name, p), q in zip(ours.named_parameters(), sharded.parameters()):
        assert torch.equal(p, q), name


def test_checkpoint_not_matching_config_is_a_clear_error(pair, tmp_path):
    ref, _, folder = pair("t2v")
    state = {k: v.contiguous() for k, v in ref.state_dict().items()}
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())

    def load(edited):
        save_file(edited, tmp_path / "diffusion_pytorch_model.safetensors")
        return WanTransformer3DModel.from_pretrained(tmp_path)

    with pytest.raises(ModelLoadError, match="parameters without weights: proj_out.bias"):
        load({k: v for k, v in state.items() if k != "proj_out.bias"})
    with pytest.raises(ModelLoadError, match="unused checkpoint keys: blocks.9.ffn.net.2.weight"):
        load({**state, "blocks.9.ffn.net.2.weight": torch.zeros(1)})
    with pytest.raises(ModelLoadError, match="proj_out.weight has shape"):
        load({**state, "proj_out.weight": torch.zeros(3, 3)})
    # keys some checkpoints carry and no layer reads are skipped, as diffusers skips them
    assert load({**state, "blocks.0.attn2.norm_added_q.weight": torch.zeros(24)}) is not None


def test_fp32_modules_stay_fp32_in_reduced_precision(pair):
    ref, _, _ = pair("i2v")
    model = WanTransformer3DModel(WanConfig.from_dict(dict(ref.config)))
    model.load_checkpoint(ref.state_dict(), dtype=torch.bfloat16)
    assert model.blocks[0].scale_shift_table.dtype == torch.float32
    assert model.condition_embedder.time_embedder.linear_1.weight.dtype == torch.float32
    assert model.blocks[0].norm2.weight.dtype == torch.float32
    assert model.blocks[0].attn1.to_q.weight.dtype == torch.bfloat16


def test_zero_padded_text_folds_to_one_key_per_padding_run_exactly(pair):
    """The text stage pads prompts with zero rows; those all embed to one key/value, which the
    model attends to once with a log-multiplicity bias instead of once per row."""
    ref, ours, _ = pair("i2v")
    x, t, text, img = inputs(VARIANTS["i2v"], 3, 10, 14, image=True)
    text[0, 20:] = 0  # a 20-token prompt
    text[1, 2:] = 0  # an almost empty negative prompt
    with torch.no_grad():
        expected = ref(x, t, text, img, return_dict=False)[0]
        context = ours.encode_context(text, img)
        assert context.kv[0].k.shape[1] == 21 and context.kv[0].scale is not None
        assert rel_err(expected, ours(x, t, context=context)) <= TOL
        # batched CFG: folded contexts of different lengths, and a folded with an unfolded one
        halves = [ours.encode_context(text[:1], img[:1]), ours.encode_context(text[1:], img[1:])]
        assert rel_err(expected, ours(x, t, context=WanContext.cat(halves))) <= TOL
        full = text.clone()
        full[0] = torch.randn(512, VARIANTS["i2v"]["text_dim"])  # no padding: nothing to fold
        expected = ref(x, t, full, img, return_dict=False)[0]
        halves = [ours.encode_context(full[:1], img[:1]), ours.encode_context(full[1:], img[1:])]
        assert halves[0].kv[0].scale is None and halves[1].kv[0].scale is not None
        assert rel_err(expected, ours(x, t, context=WanContext.cat(halves))) <= TOL
