"""FLUX.1 LoRA layouts merged into our DiT at start-up (`--lora-path`), against diffusers'
`load_lora_weights` + `fuse_lora` of the same file: diffusers/peft, kohya `lora_unet_*` (alpha),
XLabs `double_blocks.*.processor.*`; the BFL `diffusion_model.*` layout (fused qkv and linear1)
against the same adapter written in diffusers' names; the same merged at run time into the
rows of our fused q/k/v(/MLP) parameters, two adapters at once, unmerged bit for bit."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from sglang_diffusion.loader.lora import LoraSpec
from sglang_diffusion.loader.lora_merge import merge_lora, read_lora
from sglang_diffusion.loader.lora_native import NativeLoraManager
from sglang_diffusion.models.dits.flux import FluxTransformer2DModel

RANK, DIM, MLP = 2, 32, 128  # the tiny FLUX.1 transformer (2 heads x 16)
TOL = 1e-5


def rel_err(a, b) -> float:
    return ((a - b).norm() / a.norm()).item()


def lora_pair(g, fan_in, fan_out):
    return torch.randn(RANK, fan_in, generator=g) * 0.3, torch.randn(fan_out, RANK, generator=g) * 0.3


def kohya_file(path, g):
    """kohya / sd-scripts names of the BFL modules, lora_down / lora_up and an alpha each."""
    shapes = {"double_blocks_0_img_attn_qkv": (DIM, 3 * DIM), "double_blocks_0_txt_attn_proj": (DIM, DIM),
              "double_blocks_0_img_mlp_0": (DIM, MLP), "double_blocks_0_txt_mod_lin": (DIM, 6 * DIM),
              "single_blocks_0_linear2": (DIM + MLP, DIM), "single_blocks_1_modulation_lin": (DIM, 3 * DIM)}
    state = {}
    for name, (fan_in, fan_out) in shapes.items():
        a, b = lora_pair(g, fan_in, fan_out)
        state.update({f"lora_unet_{name}.lora_down.weight": a, f"lora_unet_{name}.lora_up.weight": b,
                      f"lora_unet_{name}.alpha": torch.tensor(4.0)})
    save_file(state, path)
    return path


def xlabs_file(path, g):
    state = {}
    for name, (fan_in, fan_out) in {"qkv_lora1": (DIM, 3 * DIM), "qkv_lora2": (DIM, 3 * DIM),
                                    "proj_lora1": (DIM, DIM), "proj_lora2": (DIM, DIM)}.items():
        a, b = lora_pair(g, fan_in, fan_out)
        state.update({f"double_blocks.0.processor.{name}.down.weight": a,
                      f"double_blocks.0.processor.{name}.up.weight": b})
    save_file(state, path)
    return path


def peft_file(path, g):
    state = {}
    for name, (fan_in, fan_out) in {"transformer_blocks.0.attn.to_k": (DIM, DIM),
                                    "transformer_blocks.0.ff_context.net.2": (MLP, DIM),
                                    "single_transformer_blocks.1.proj_mlp": (DIM, MLP)}.items():
        a, b = lora_pair(g, fan_in, fan_out)
        state.update({f"transformer.{name}.lora_A.weight": a, f"transformer.{name}.lora_B.weight": b})
    save_file(state, path)
    return path


@pytest.fixture(scope="module")
def inputs():
    from sglang_diffusion.models.dits.flux import image_ids

    g = torch.Generator().manual_seed(1)
    return dict(hidden_states=torch.randn(1, 16, 64, generator=g), encoder_hidden_states=torch.randn(1, 6, 32, generator=g),
                pooled_projections=torch.randn(1, 32, generator=g), timestep=torch.tensor([0.6]),
                img_ids=image_ids(4, 4), txt_ids=torch.zeros(6, 3), guidance=torch.tensor([3.5]))


def forward(model, kw):
    context = model.encode_context(kw["encoder_hidden_states"], kw["pooled_projections"], kw["guidance"],
                                   kw["txt_ids"])
    with torch.no_grad():
        return model.forward_tokens(kw["hidden_states"], kw["timestep"], context,
                                    *model.rope(kw["txt_ids"], kw["img_ids"]))


def ours(folder, lora_path, kw):
    lora = read_lora(str(lora_path))
    merged = []
    model = FluxTransformer2DModel.from_pretrained(
        folder / "transformer", state_edit=lambda s: (merged.append(merge_lora(s, lora)), s)[1])
    return forward(model, kw), merged[0]


def diffusers(folder, lora_path, kw):
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(folder)
    if lora_path is not None:
        pipe.load_lora_weights(str(lora_path))
        pipe.fuse_lora()
    with torch.no_grad():
        return pipe.transformer(**kw, return_dict=False)[0]


@pytest.mark.slow
@pytest.mark.parametrize("layout,writer,layers", [("peft", peft_file, 3), ("kohya", kohya_file, 8),
                                                  ("xlabs", xlabs_file, 8)])
def test_layout_equals_diffusers_load_lora_weights(tiny_model, tmp_path, inputs, layout, writer, layers):
    folder = tiny_model("flux.1")
    path = writer(tmp_path / f"{layout}.safetensors", torch.Generator().manual_seed(3))
    got, merged = ours(folder, path, inputs)
    expected = diffusers(folder, path, inputs)
    assert merged == layers  # fused BFL layers count once per diffusers module they stand for
    assert rel_err(expected, got) <= TOL
    assert rel_err(diffusers(folder, None, inputs), got) > 1e-3


def test_bfl_layout_splits_fused_layers_like_the_diffusers_names(tiny_model, tmp_path, inputs):
    """diffusion_model.double_blocks.0.img_attn.qkv / single_blocks.0.linear1 (q, k, v, MLP in)
    equal the same matrices given per diffusers module."""
    g = torch.Generator().manual_seed(4)
    a1, b1 = lora_pair(g, DIM, 3 * DIM)
    a2, b2 = lora_pair(g, DIM, 3 * DIM + MLP)
    save_file({"diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight": a1,
               "diffusion_model.double_blocks.0.img_attn.qkv.lora_B.weight": b1,
               "diffusion_model.single_blocks.0.linear1.lora_A.weight": a2,
               "diffusion_model.single_blocks.0.linear1.lora_B.weight": b2}, tmp_path / "bfl.safetensors")
    split = {}
    for module, part in zip(("to_q", "to_k", "to_v"), b1.split(DIM)):
        split[f"transformer.transformer_blocks.0.attn.{module}.lora_A.weight"] = a1.clone()
        split[f"transformer.transformer_blocks.0.attn.{module}.lora_B.weight"] = part.clone()
    for module, part in zip(("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"), b2.split([DIM] * 3 + [MLP])):
        split[f"transformer.single_transformer_blocks.0.{module}.lora_A.weight"] = a2.clone()
        split[f"transformer.single_transformer_blocks.0.{module}.lora_B.weight"] = part.clone()
    save_file(split, tmp_path / "split.safetensors")
    folder = tiny_model("flux.1")
    bfl, merged = ours(folder, tmp_path / "bfl.safetensors", inputs)
    assert merged == 7
    assert rel_err(ours(folder, tmp_path / "split.safetensors", inputs)[0], bfl) <= TOL
    assert rel_err(diffusers(folder, tmp_path / "split.safetensors", inputs), bfl) <= TOL


def test_run_time_merge_of_two_adapters_equals_the_checkpoint_merge_and_unmerges_bit_for_bit(tiny_model, tmp_path,
                                                                                             inputs):
    """kohya's fused img_attn_qkv / linear1 land in the rows of our to_qkv / to_qkv_mlp parameters."""
    folder = tiny_model("flux.1")
    kohya = kohya_file(tmp_path / "kohya.safetensors", torch.Generator().manual_seed(3))
    peft = peft_file(tmp_path / "peft.safetensors", torch.Generator().manual_seed(5))
    model = FluxTransformer2DModel.from_pretrained(folder / "transformer")
    base = {k: v.clone() for k, v in model.state_dict().items()}
    manager = NativeLoraManager({"transformer": (model, folder / "transformer")})
    manager.set([LoraSpec("kohya", str(kohya), strength=0.7), LoraSpec("peft", str(peft), strength=-0.4)])
    state_merged = FluxTransformer2DModel.from_pretrained(
        folder / "transformer", state_edit=lambda s: (merge_lora(s, read_lora(str(kohya)), strength=0.7),
                                                      merge_lora(s, read_lora(str(peft)), strength=-0.4), s)[2])
    assert rel_err(forward(state_merged, inputs), forward(model, inputs)) <= TOL
    manager.unmerge()
    assert all(torch.equal(base[k], v) for k, v in model.state_dict().items())
    manager.use([LoraSpec("kohya", strength=0.7), LoraSpec("peft", strength=-0.4)])  # a request's adapters
    assert rel_err(forward(state_merged, inputs), forward(model, inputs)) <= TOL
