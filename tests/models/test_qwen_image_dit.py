"""Our Qwen-Image DiT against diffusers' QwenImageTransformer2DModel on identical random weights
(fp32), square and non-square token grids, masked text, edit reference images; CFG branches;
loading (every checkpoint key used, every parameter filled, clear errors)."""

from __future__ import annotations

import pytest
import torch
from diffusers import QwenImageTransformer2DModel as DiffusersQwenImage
from safetensors.torch import save_file

from sglang_diffusion.errors import ModelLoadError
from sglang_diffusion.models.dits.checkpoint import rename
from sglang_diffusion.models.dits.qwen_image import (QwenImageConfig, QwenImageContext, QwenImageTransformer2DModel,
                                                     pack_latents)

CONFIG = dict(patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16,
              num_attention_heads=2, joint_attention_dim=24, axes_dims_rope=[4, 6, 6])
TOL = 1e-5


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / a.norm()).item()


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(diffusers model, our model loaded from its saved folder, folder)."""
    torch.manual_seed(0)
    ref = DiffusersQwenImage(**CONFIG).eval()
    with torch.no_grad():  # zero-initialised parts too: every weight must matter
        for p in ref.parameters():
            p.normal_(0, 0.3)
    folder = tmp_path_factory.mktemp("qwen_dit")
    ref.save_pretrained(folder)
    return ref, QwenImageTransformer2DModel.from_pretrained(folder), folder


def latents(height: int, width: int, batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 4, 1, height, width, generator=torch.Generator().manual_seed(seed))


def unpacked(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """diffusers' packed output [B, S, C*4] -> [B, C, 1, H, W] (its _unpack_latents)."""
    b = tokens.shape[0]
    x = tokens.view(b, height // 2, width // 2, -1, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, -1, 1, height, width)


def diffusers_forward(ref, x_list: list[torch.Tensor], text, t, mask=None) -> torch.Tensor:
    """diffusers on [generated, references...] packed along the sequence, the generated part."""
    shapes = [(1, x.shape[-2] // 2, x.shape[-1] // 2) for x in x_list]
    packed = torch.cat([pack_latents(x, 2) for x in x_list], dim=1)
    out = ref(hidden_states=packed, encoder_hidden_states=text, encoder_hidden_states_mask=mask, timestep=t,
              img_shapes=[shapes] * packed.shape[0], return_dict=False)[0]
    return unpacked(out[:, : shapes[0][1] * shapes[0][2]], *x_list[0].shape[-2:])


@pytest.mark.parametrize("size", [(8, 8), (6, 10), (12, 4)], ids=["square", "wide", "tall"])
def test_forward_equals_diffusers(pair, size):
    ref, ours, _ = pair
    x = latents(*size)
    text = torch.randn(2, 7, 24, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([0.7, 0.3])  # diffusers' units; ours takes the scheduler's (x 1000)
    with torch.no_grad():
        expected = diffusers_forward(ref, [x], text, t)
        got = ours(x, t * 1000, text)
    assert got.shape == expected.shape
    assert rel_err(expected, got) <= TOL


def test_masked_text_equals_diffusers_and_batched_cfg_of_unequal_prompts(pair):
    """Padded text keys are masked out (a logit bias in extra head channels), as diffusers'
    attention mask does; batched CFG pads the shorter prompt and masks it."""
    ref, ours, _ = pair
    x = latents(6, 10, batch=1).repeat(2, 1, 1, 1, 1)  # one image, two prompts
    text = torch.randn(2, 7, 24, generator=torch.Generator().manual_seed(2))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 4:] = 0
    t = torch.tensor([0.7, 0.7])
    with torch.no_grad():
        expected = diffusers_forward(ref, [x], text, t, mask)
        assert rel_err(expected, ours(x, t * 1000, text, mask)) <= TOL
        contexts = [ours.encode_context(text[:1]), ours.encode_context(text[1:, :4])]
        separate = [ours(x[:1], t[:1] * 1000, context=c) for c in contexts]
        assert not torch.allclose(separate[0], separate[1])  # the prompts matter
        two_pass = ours.forward_branches(x[:1], t[:1] * 1000, contexts)
        batched = ours.forward_branches(x[:1], t[:1] * 1000, contexts, joined=QwenImageContext.cat(contexts))
    for got_two_pass, got_batched, want in zip(two_pass, batched, separate):
        assert torch.equal(got_two_pass, want)
        assert rel_err(want, got_batched) <= TOL
    for want, got in zip(expected, separate):  # the masked prompt equals the same prompt unpadded
        assert rel_err(want, got[0]) <= TOL


def test_reference_images_equal_diffusers_edit_layout(pair):
    """Qwen-Image-Edit: reference latents (here two, of other sizes) follow the generated image
    in the sequence, at frames 1, 2 of the RoPE grid; only the generated part is predicted."""
    ref, ours, _ = pair
    x, refs = latents(8, 6), [latents(6, 10, seed=3), latents(4, 4, seed=4)]
    text = torch.randn(2, 5, 24, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([0.4, 0.9])
    with torch.no_grad():
        expected = diffusers_forward(ref, [x, *refs], text, t)
        got = ours(x, t * 1000, context=ours.encode_context(text, refs))
    assert rel_err(expected, got) <= TOL


def test_zero_cond_t_references_modulated_as_clean_equal_diffusers(tmp_path):
    """Qwen-Image-Edit-2511 (zero_cond_t): the reference tokens take the t = 0 modulation."""
    torch.manual_seed(0)
    ref = DiffusersQwenImage(**CONFIG, zero_cond_t=True).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.3)
    ref.save_pretrained(tmp_path)
    ours = QwenImageTransformer2DModel.from_pretrained(tmp_path)
    x, refs = latents(6, 8), [latents(4, 6, seed=3)]
    text = torch.randn(2, 5, 24, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([0.4, 0.9])
    with torch.no_grad():
        expected = diffusers_forward(ref, [x, *refs], text, t)
        got = ours(x, t * 1000, context=ours.encode_context(text, refs))
        plain = ours(x, t * 1000, context=ours.encode_context(text))  # no references: t everywhere
        assert rel_err(diffusers_forward(ref, [x], text, t), plain) <= TOL
    assert rel_err(expected, got) <= TOL


def test_loading_uses_every_checkpoint_key_and_fills_every_parameter(pair):
    """Every parameter is a renamed checkpoint key or the concatenation of fused q/k/v keys."""
    ref, ours, _ = pair
    state = ref.state_dict()
    params = dict(ours.named_parameters())
    filled = set()
    for name, param in params.items():
        module, _, leaf = name.rpartition(".")
        parent, _, fused = module.rpartition(".")
        if fused in ours.fused:
            expected = torch.cat([state[f"{parent}.{part}.{leaf}"] for part in ours.fused[fused]])
            filled |= {f"{parent}.{part}.{leaf}" for part in ours.fused[fused]}
        else:
            key = next(k for k in state if rename(k, ours.key_map) == name)
            expected = state[key]
            filled.add(key)
        assert torch.equal(param, expected), name
    assert filled == set(state)


def test_every_size_comes_from_config_json(pair):
    ref, ours, _ = pair
    assert ours.config == QwenImageConfig.from_dict(dict(ref.config))
    assert ours.config.patch_size == (1, 2, 2) and len(ours.transformer_blocks) == CONFIG["num_layers"]
    assert ours.txt_in.in_features == CONFIG["joint_attention_dim"]


def test_checkpoint_not_matching_config_is_a_clear_error(pair, tmp_path):
    ref, _, folder = pair
    state = {k: v.contiguous() for k, v in ref.state_dict().items()}
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())

    def load(edited):
        save_file(edited, tmp_path / "diffusion_pytorch_model.safetensors")
        return QwenImageTransformer2DModel.from_pretrained(tmp_path)

    with pytest.raises(ModelLoadError, match="parameters without weights: proj_out.bias"):
        load({k: v for k, v in state.items() if k != "proj_out.bias"})
    with pytest.raises(ModelLoadError, match="unused checkpoint keys: transformer_blocks.9"):
        load({**state, "transformer_blocks.9.img_mlp.net.2.weight": torch.zeros(1)})
    with pytest.raises(ModelLoadError, match="proj_out.weight has shape"):
        load({**state, "proj_out.weight": torch.zeros(3, 3)})


def test_unsupported_variants_are_refused_by_name():
    with pytest.raises(ModelLoadError, match="use_layer3d_rope"):  # Qwen-Image-Layered
        QwenImageConfig.from_dict(dict(CONFIG, use_layer3d_rope=True))
    with pytest.raises(ModelLoadError, match="axes_dims_rope"):
        QwenImageConfig.from_dict(dict(CONFIG, axes_dims_rope=[4, 4, 4]))
