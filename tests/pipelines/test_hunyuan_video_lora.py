"""--lora-path on the native HunyuanVideo pipeline: a diffusers/peft LoRA (written by diffusers) and
the same adapter in the original HunyuanVideo layout (fused img/txt_attn_qkv and linear1 split
by the loader; dotted names with lora_A/lora_B, and kohya/musubi underscores with lora_down/up and
alpha) merged at start-up give diffusers' pipeline after its `load_lora_weights` of the peft file."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from sglang_diffusion.config.sampling_params import SamplingParams
from sglang_diffusion.config.server_args import ServerArgs
from sglang_diffusion.pipelines.registry import build_pipeline
from sglang_diffusion.platform import Platform

REQUEST = dict(prompt="a paper boat on a pond", height=32, width=32, num_frames=5, num_inference_steps=2,
               guidance_scale=6.0, seed=3)
RANK = 4
# the blocks' layers (a regex: the token refiner's attention has to_q too)
TARGETS = (r"(single_)?transformer_blocks\.\d+\.(attn\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj|"
           r"to_add_out)|proj_mlp|ff\.net\.0\.proj|norm1\.linear)")
# original name -> the diffusers modules (in output order) it fuses, per block kind
FUSED = {("double_blocks", "transformer_blocks"): {"img_attn_qkv": ["attn.to_q", "attn.to_k", "attn.to_v"],
                                                   "txt_attn_qkv": ["attn.add_q_proj", "attn.add_k_proj",
                                                                    "attn.add_v_proj"],
                                                   "img_attn_proj": ["attn.to_out.0"], "img_mlp.fc1": ["ff.net.0.proj"],
                                                   "txt_attn_proj": ["attn.to_add_out"],
                                                   "img_mod.linear": ["norm1.linear"]},
         ("single_blocks", "single_transformer_blocks"): {"linear1": ["attn.to_q", "attn.to_k", "attn.to_v",
                                                                      "proj_mlp"]}}


def rel_err(a, b) -> float:
    return ((a - b).norm() / a.norm()).item()


def write_peft_lora(folder, model_folder):
    """diffusers' own format from a peft adapter (alpha 2 * rank in the metadata); the modules an
    original fused layer stands for share its down matrix, so that both layouts are one adapter."""
    from diffusers import HunyuanVideoPipeline, HunyuanVideoTransformer3DModel
    from peft import LoraConfig, get_peft_model_state_dict

    transformer = HunyuanVideoTransformer3DModel.from_pretrained(model_folder / "transformer")
    config = LoraConfig(r=RANK, lora_alpha=2 * RANK, init_lora_weights=False, target_modules=TARGETS)
    transformer.add_adapter(config)
    g = torch.Generator().manual_seed(0)
    params = dict(transformer.named_parameters())
    with torch.no_grad():
        for name, p in params.items():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        for (_, blocks), fused in FUSED.items():
            for i in range(len(getattr(transformer, blocks))):
                for modules in fused.values():
                    first = params[f"{blocks}.{i}.{modules[0]}.lora_A.default.weight"]
                    for m in modules[1:]:
                        params[f"{blocks}.{i}.{m}.lora_A.default.weight"].copy_(first)
    HunyuanVideoPipeline.save_lora_weights(folder, transformer_lora_layers=get_peft_model_state_dict(transformer),
                                           transformer_lora_adapter_metadata=config.to_dict())
    return folder / "pytorch_lora_weights.safetensors"


def write_original_lora(peft_file, path, kohya: bool):
    """The peft adapter in the original layout: fused up matrices concatenated, alpha as a key."""
    peft = load_file(peft_file)
    state = {}
    for (original_blocks, blocks), fused in FUSED.items():
        indices = {int(k.split(".")[2]) for k in peft if k.startswith(f"transformer.{blocks}.")}
        for i in indices:
            for original, modules in fused.items():
                down = peft[f"transformer.{blocks}.{i}.{modules[0]}.lora_A.weight"]
                up = torch.cat([peft[f"transformer.{blocks}.{i}.{m}.lora_B.weight"] for m in modules])
                if kohya:
                    key = f"lora_unet_{original_blocks}_{i}_{original.replace('.', '_')}"
                    state[f"{key}.lora_down.weight"], state[f"{key}.lora_up.weight"] = down, up
                    state[f"{key}.alpha"] = torch.tensor(2.0 * RANK)
                else:
                    key = f"diffusion_model.{original_blocks}.{i}.{original}"
                    state[f"{key}.lora_A.weight"], state[f"{key}.lora_B.weight"] = down, up
                    state[f"{key}.alpha"] = torch.tensor(2.0 * RANK)
    save_file(state, path)
    return path


@pytest.fixture(scope="module")
def model(tiny_model):
    return tiny_model("hunyuanvideo")


@pytest.fixture(scope="module")
def expected(model, tmp_path_factory):
    """(peft file, diffusers' latents with it loaded, diffusers' latents without)."""
    from diffusers import HunyuanVideoPipeline

    folder = tmp_path_factory.mktemp("peft")
    path = write_peft_lora(folder, model)
    kwargs = {k: v for k, v in REQUEST.items() if k != "seed"}
    pipe = HunyuanVideoPipeline.from_pretrained(model)

    def run():
        return pipe(**kwargs, generator=torch.Generator("cpu").manual_seed(REQUEST["seed"]),
                    output_type="latent").frames

    plain = run()
    pipe.load_lora_weights(str(path))
    return path, run(), plain


@pytest.mark.parametrize("layout", ["peft", "original", "kohya"])
def test_merged_lora_equals_diffusers_load_lora_weights(layout, model, expected, tmp_path):
    peft_file, want, plain = expected
    path = peft_file if layout == "peft" else write_original_lora(peft_file, tmp_path / f"{layout}.safetensors",
                                                                  kohya=layout == "kohya")
    pipe = build_pipeline(ServerArgs(model_path=str(model), lora_path=str(path)), Platform.current())
    ours = pipe.run(SamplingParams(**REQUEST)).latents
    assert rel_err(want, ours) <= 1e-4
    assert rel_err(want, plain) > 1e-2  # the LoRA changes the output
    assert pipe.lora.describe()["active"]["transformer"][0]["merged"] is True
