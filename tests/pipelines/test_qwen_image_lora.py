"""--lora-path on the native Qwen-Image pipeline: a diffusers/peft LoRA (written by diffusers), and
the same adapter in the layouts Qwen-Image LoRAs ship in (Lightning-style `lora_down`/`lora_up`
with `.alpha` on diffusers module names, `diffusion_model.`-prefixed `lora_A`/`lora_B`, kohya
underscores), merged at start-up into the rows of our fused q/k/v, give diffusers' pipeline after its
`load_lora_weights` of the peft file; unmerged at run time it is the base again, and a request
naming the adapter gets it back."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from sglang_diffusion.config.sampling_params import SamplingParams
from sglang_diffusion.config.server_args import ServerArgs
from sglang_diffusion.loader.lora import use_request_loras
from sglang_diffusion.pipelines.registry import build_pipeline
from sglang_diffusion.platform import Platform

REQUEST = dict(prompt="a paper boat on a pond", height=32, width=48, num_inference_steps=2, seed=3)
RANK = 4
TARGETS = r"transformer_blocks\.\d+\.(attn\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_v_proj|to_add_out)|img_mod\.1|" \
          r"img_mlp\.net\.0\.proj|txt_mlp\.net\.2)"


def rel_err(a, b) -> float:
    return ((a - b).norm() / a.norm()).item()


def write_peft_lora(folder, model_folder):
    from diffusers import QwenImagePipeline, QwenImageTransformer2DModel
    from peft import LoraConfig, get_peft_model_state_dict

    transformer = QwenImageTransformer2DModel.from_pretrained(model_folder / "transformer")
    config = LoraConfig(r=RANK, lora_alpha=2 * RANK, init_lora_weights=False, target_modules=TARGETS)
    transformer.add_adapter(config)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in transformer.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    QwenImagePipeline.save_lora_weights(folder, transformer_lora_layers=get_peft_model_state_dict(transformer),
                                        transformer_lora_adapter_metadata=config.to_dict())
    return folder / "pytorch_lora_weights.safetensors"


def write_other_layout(peft_file, path, layout: str):
    """The peft adapter renamed: `lightning` (module.lora_down/up + alpha), `prefixed`
    (diffusion_model.module.lora_A/B + alpha), `kohya` (lora_unet_module_with_underscores)."""
    state = {}
    for key, tensor in load_file(peft_file).items():
        module, kind = key.removeprefix("transformer.").rsplit(".lora_", 1)
        down = kind.startswith("A")
        if layout == "kohya":
            name = "lora_unet_" + module.replace(".", "_")
            state[f"{name}.{'lora_down' if down else 'lora_up'}.weight"] = tensor
        elif layout == "lightning":
            name = module
            state[f"{name}.{'lora_down' if down else 'lora_up'}.weight"] = tensor
        else:
            name = "diffusion_model." + module
            state[f"{name}.{'lora_A' if down else 'lora_B'}.weight"] = tensor
        state[f"{name}.alpha"] = torch.tensor(2.0 * RANK)
    save_file(state, path)
    return path


@pytest.fixture(scope="module")
def model(tiny_model):
    return tiny_model("qwen-image")


@pytest.fixture(scope="module")
def expected(model, tmp_path_factory):
    """(peft file, diffusers' latents with it loaded, diffusers' latents without)."""
    from diffusers import QwenImagePipeline

    path = write_peft_lora(tmp_path_factory.mktemp("peft"), model)
    kwargs = {k: v for k, v in REQUEST.items() if k != "seed"}
    pipe = QwenImagePipeline.from_pretrained(model)

    def run():
        return pipe(**kwargs, generator=torch.Generator("cpu").manual_seed(REQUEST["seed"]),
                    output_type="latent").images

    plain = run()
    pipe.load_lora_weights(str(path))
    return path, pipe._unpack_latents(run(), 32, 48, 8), pipe._unpack_latents(plain, 32, 48, 8)


@pytest.mark.parametrize("layout", ["peft", *(pytest.param(name, marks=pytest.mark.slow)
                                              for name in ("lightning", "prefixed", "kohya"))])
def test_merged_lora_equals_diffusers_load_lora_weights(layout, model, expected, tmp_path):
    peft_file, want, plain = expected
    path = peft_file if layout == "peft" else write_other_layout(peft_file, tmp_path / f"{layout}.safetensors", layout)
    pipe = build_pipeline(ServerArgs(model_path=str(model), lora_path=str(path)), Platform.current())
    ours = pipe.run(SamplingParams(**REQUEST)).latents
    assert rel_err(want, ours) <= 1e-4
    assert rel_err(want, plain) > 1e-2  # the LoRA changes the output
    assert pipe.lora.describe()["active"]["transformer"][0]["merged"] is True
    pipe.lora.unmerge()  # at run time: the base weights, then the adapter again for a request naming it
    assert rel_err(plain, pipe.run(SamplingParams(**REQUEST)).latents) <= 1e-4
    params = SamplingParams(**REQUEST, lora_adapters="default")
    use_request_loras(pipe, params)
    assert torch.equal(pipe.run(params).latents, ours)
