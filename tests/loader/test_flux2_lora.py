"""FLUX.2 LoRA layouts merged at run time into our DiT (`NativeLoraManager`), against diffusers'
own loading of the same file (`Flux2Pipeline.lora_state_dict` + `load_lora_into_transformer`,
what its `load_lora_weights` does) on identical random weights: diffusers/peft names, ai-toolkit
`diffusion_model.*` BFL names (fused img/txt qkv split, `linear1` kept fused, the shared
modulations and the layers outside the blocks) and kohya `lora_unet_*` with alpha; unmerge
gives the base weights back bit for bit."""

from __future__ import annotations

import pytest
import torch
from diffusers import Flux2Pipeline
from diffusers import Flux2Transformer2DModel as DiffusersFlux2
from safetensors.torch import save_file

from sglang_diffusion.loader.lora import LoraSpec
from sglang_diffusion.loader.lora_native import NativeLoraManager
from sglang_diffusion.models.dits.flux2 import Flux2Transformer2DModel
from tests.compare import rel_err
from tests.models.dit_pairs import saved_pair
from tests.models.test_flux2_dit import VARIANTS, diffusers_call, inputs

RANK = 2
TOL = 1e-5
# BFL names (ai-toolkit dots) -> the diffusers modules whose output features they stack
BFL = {
    "double_blocks.0.img_attn.qkv": ("transformer_blocks.0.attn.to_q", "transformer_blocks.0.attn.to_k",
                                     "transformer_blocks.0.attn.to_v"),
    "double_blocks.1.txt_attn.qkv": ("transformer_blocks.1.attn.add_q_proj", "transformer_blocks.1.attn.add_k_proj",
                                     "transformer_blocks.1.attn.add_v_proj"),
    "double_blocks.0.img_attn.proj": ("transformer_blocks.0.attn.to_out.0",),
    "double_blocks.1.txt_attn.proj": ("transformer_blocks.1.attn.to_add_out",),
    "double_blocks.0.img_mlp.0": ("transformer_blocks.0.ff.linear_in",),
    "double_blocks.1.txt_mlp.2": ("transformer_blocks.1.ff_context.linear_out",),
    "single_blocks.0.linear1": ("single_transformer_blocks.0.attn.to_qkv_mlp_proj",),
    "single_blocks.1.linear2": ("single_transformer_blocks.1.attn.to_out",),
    "double_stream_modulation_img.lin": ("double_stream_modulation_img.linear",),
    "img_in": ("x_embedder",),
    "final_layer.linear": ("proj_out",),
}
KOHYA_UNREAD = ("double_stream_modulation",)  # diffusers' kohya FLUX.2 reader has no names for these
PEFT = ("transformer_blocks.0.attn.to_k", "transformer_blocks.1.ff.linear_in",
        "single_transformer_blocks.0.attn.to_qkv_mlp_proj", "single_stream_modulation.linear")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("flux2-dit")
    ref, ours = saved_pair(DiffusersFlux2, Flux2Transformer2DModel, VARIANTS["dev"], folder)
    return ref, ours, folder, {k: tuple(v.shape) for k, v in ref.state_dict().items()}


def pair(g, shapes, modules):
    fan_in = shapes[modules[0] + ".weight"][1]
    fan_out = sum(shapes[m + ".weight"][0] for m in modules)
    return torch.randn(RANK, fan_in, generator=g) * 0.3, torch.randn(fan_out, RANK, generator=g) * 0.3


def write(path, layout, shapes):
    g, state = torch.Generator().manual_seed(7), {}
    if layout == "peft":
        for module in PEFT:
            a, b = pair(g, shapes, (module,))
            state.update({f"transformer.{module}.lora_A.weight": a, f"transformer.{module}.lora_B.weight": b})
    for name, modules in BFL.items() if layout != "peft" else ():
        a, b = pair(g, shapes, modules)
        if layout == "ai-toolkit":
            state.update({f"diffusion_model.{name}.lora_A.weight": a, f"diffusion_model.{name}.lora_B.weight": b})
        elif not name.startswith(KOHYA_UNREAD):
            key = "lora_unet_" + name.replace(".", "_")
            state.update({f"{key}.lora_down.weight": a, f"{key}.lora_up.weight": b, f"{key}.alpha": torch.tensor(4.0)})
    save_file(state, path)
    return path


def diffusers_with_lora(folder, path):
    ref = DiffusersFlux2.from_pretrained(folder).eval()
    Flux2Pipeline.load_lora_into_transformer(Flux2Pipeline.lora_state_dict(str(path)), transformer=ref)
    return ref


def forward(ours, ref, config):
    latents, text, t, guidance = inputs(config, 4, 4)
    with torch.no_grad():
        got = ours(latents.unsqueeze(2), t, ours.encode_context(text, guidance)).squeeze(2)
        return got, diffusers_call(ref, latents, text, t, guidance)


@pytest.mark.parametrize("layout", ["peft", "ai-toolkit", "kohya"])
def test_flux2_layout_at_run_time_equals_diffusers_and_unmerges_bit_for_bit(models, tmp_path, layout):
    ref, ours, folder, shapes = models
    path = write(tmp_path / f"{layout}.safetensors", layout, shapes)
    base = {k: v.clone() for k, v in ours.state_dict().items()}
    manager = NativeLoraManager({"transformer": (ours, folder)})
    manager.set([LoraSpec("x", str(path))])
    modules = len(PEFT) if layout == "peft" else sum(len(m) for name, m in BFL.items()
                                                     if layout != "kohya" or not name.startswith(KOHYA_UNREAD))
    assert len(manager._layers("x", "transformer", "all")) == modules  # every layer matched, fused ones split
    got, expected = forward(ours, diffusers_with_lora(folder, path), VARIANTS["dev"])
    assert rel_err(expected, got) <= TOL
    assert rel_err(forward(ours, ref, VARIANTS["dev"])[1], got) > 1e-3  # the adapter changes the output
    manager.unmerge()
    assert all(torch.equal(base[k], v) for k, v in ours.state_dict().items())
