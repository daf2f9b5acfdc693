"""--lora-path on the native Wan pipeline: LoRAs in diffusers/peft, original-Wan and kohya/musubi
key layouts, merged into our DiT at start-up, equal diffusers' pipeline after its
`load_lora_weights` of the same file; unreadable or unmatched files are clear errors; at run time
an adapter aimed at Wan2.2's transformer_2 changes that expert only."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from sglang_diffusion.config.sampling_params import SamplingParams
from sglang_diffusion.config.server_args import ServerArgs
from sglang_diffusion.errors import ModelLoadError
from sglang_diffusion.pipelines.registry import build_pipeline
from sglang_diffusion.platform import Platform

FAMILY = "wan2.1-t2v"
REQUEST = dict(prompt="a lighthouse at dusk", height=64, width=64, num_frames=5, num_inference_steps=2,
               guidance_scale=4.0, seed=5)
RANK, DIM, FFN, LAYERS = 4, 32, 64, 2  # the tiny Wan2.1 T2V transformer
# original Wan module names -> (in, out) features, per block
ORIGINAL = {**{f"{a}.{o}": (DIM, DIM) for a in ("self_attn", "cross_attn") for o in "qkvo"},
            "ffn.0": (DIM, FFN), "ffn.2": (FFN, DIM)}


def rel_err(a, b) -> float:
    return ((a - b).norm() / a.norm()).item()


def _pair(g, fan_in, fan_out):
    return torch.randn(RANK, fan_in, generator=g) * 0.3, torch.randn(fan_out, RANK, generator=g) * 0.3


def write_peft_lora(folder, model_folder):
    """diffusers' own format, written by diffusers from a peft adapter (alpha in the metadata)."""
    from diffusers import WanPipeline, WanTransformer3DModel
    from peft import LoraConfig, get_peft_model_state_dict

    transformer = WanTransformer3DModel.from_pretrained(model_folder / "transformer")
    config = LoraConfig(r=RANK, lora_alpha=2 * RANK, init_lora_weights=False,
                        target_modules=["to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "proj_out"])
    transformer.add_adapter(config)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in transformer.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    WanPipeline.save_lora_weights(folder, transformer_lora_layers=get_peft_model_state_dict(transformer),
                                  transformer_lora_adapter_metadata=config.to_dict())
    return folder / "pytorch_lora_weights.safetensors"


def write_original_lora(path):
    """The Wan repository's names, lora_down/lora_up with alpha (scale 2 / 4), and a head layer
    without alpha."""
    g, state = torch.Generator().manual_seed(1), {}
    for i in range(LAYERS):
        for name, (fan_in, fan_out) in ORIGINAL.items():
            down, up = _pair(g, fan_in, fan_out)
            state[f"diffusion_model.blocks.{i}.{name}.lora_down.weight"] = down
            state[f"diffusion_model.blocks.{i}.{name}.lora_up.weight"] = up
            state[f"diffusion_model.blocks.{i}.{name}.alpha"] = torch.tensor(2.0)
    down, up = _pair(g, DIM, 16 * 4)
    state["diffusion_model.head.head.lora_down.weight"], state["diffusion_model.head.head.lora_up.weight"] = down, up
    save_file(state, path)
    return path


def write_kohya_lora(path):
    """kohya / musubi-tuner: `lora_unet_` and the module path joined by underscores, alpha 8 / 4."""
    g, state = torch.Generator().manual_seed(2), {}
    for i in range(LAYERS):
        for name, (fan_in, fan_out) in ORIGINAL.items():
            key = f"lora_unet_blocks_{i}_{name.replace('.', '_')}"
            state[f"{key}.lora_down.weight"], state[f"{key}.lora_up.weight"] = _pair(g, fan_in, fan_out)
            state[f"{key}.alpha"] = torch.tensor(8.0)
    save_file(state, path)
    return path


@pytest.fixture(scope="module")
def lora_files(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("loras")
    (root / "peft").mkdir()
    return {"peft": write_peft_lora(root / "peft", tiny_model(FAMILY)),
            "original": write_original_lora(root / "original.safetensors"),
            "kohya": write_kohya_lora(root / "kohya.safetensors")}


def native_latents(model, lora_path=None):
    pipe = build_pipeline(ServerArgs(model_path=str(model), lora_path=lora_path), Platform.current())
    return pipe, pipe.run(SamplingParams(**REQUEST)).latents


def diffusers_latents(model, lora_path=None):
    from diffusers import WanPipeline

    pipe = WanPipeline.from_pretrained(model)
    if lora_path is not None:
        pipe.load_lora_weights(str(lora_path))
    kwargs = {k: v for k, v in REQUEST.items() if k != "seed"}
    return pipe(**kwargs, generator=torch.Generator("cpu").manual_seed(REQUEST["seed"]), output_type="latent").frames


@pytest.mark.parametrize("layout", ["peft", "original", "kohya"])
def test_merged_lora_equals_diffusers_load_lora_weights(layout, lora_files, tiny_model):
    model = tiny_model(FAMILY)
    path = lora_files[layout]
    if layout == "peft":
        path = path.parent  # a folder holding the adapter works too
    pipe, ours = native_latents(model, str(path))
    expected = diffusers_latents(model, path)
    assert rel_err(expected, ours) <= 1e-4
    assert rel_err(expected, diffusers_latents(model)) > 1e-2  # the LoRA changes the output
    assert pipe.describe()["lora"] == str(path)
    assert pipe.lora.describe()["active"]["transformer"][0]["merged"] is True


def test_unreadable_or_unmatched_lora_files_are_clear_errors(tiny_model, tmp_path):
    model = str(tiny_model(FAMILY))
    with pytest.raises(ModelLoadError, match="no such file or folder"):
        build_pipeline(ServerArgs(model_path=model, lora_path=str(tmp_path / "missing.safetensors")),
                       Platform.current())
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError, match="cannot read junk.safetensors as safetensors"):
        build_pipeline(ServerArgs(model_path=model, lora_path=str(junk)), Platform.current())
    no_lora = tmp_path / "weights.safetensors"
    save_file({"blocks.0.attn1.to_q.weight": torch.zeros(2, 2)}, no_lora)
    with pytest.raises(ModelLoadError, match="holds no LoRA weights"):
        build_pipeline(ServerArgs(model_path=model, lora_path=str(no_lora)), Platform.current())
    other_model = tmp_path / "other.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 8),
               "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(8, 4)}, other_model)
    with pytest.raises(ModelLoadError, match="none of its weights match a layer of transformer"):
        build_pipeline(ServerArgs(model_path=model, lora_path=str(other_model)), Platform.current())


def test_bias_and_full_weight_deltas_are_added_as_they_are():
    # diffusers loads diff_b only when every layer has one; the merge itself is plain addition
    from sglang_diffusion.loader.lora_merge import LoraFile, LoraLayer, merge_lora

    g = torch.Generator().manual_seed(3)
    state = {"blocks.0.attn1.to_q.weight": torch.randn(4, 4, generator=g), "blocks.0.attn1.to_q.bias": torch.zeros(4),
             "proj_out.weight": torch.randn(4, 4, generator=g), "proj_out.bias": torch.zeros(4)}
    before = {k: v.clone() for k, v in state.items()}
    diff, diff_b = torch.randn(4, 4, generator=g), torch.randn(4, generator=g)
    lora = LoraFile("mem", {"diffusion_model.blocks.0.self_attn.q": LoraLayer(diff=diff, diff_b=diff_b),
                            "transformer_2.proj_out": LoraLayer(diff=diff)})
    assert merge_lora(state, lora, "transformer", strength=0.5) == 1  # transformer_2's layer is not ours
    torch.testing.assert_close(state["blocks.0.attn1.to_q.weight"], before["blocks.0.attn1.to_q.weight"] + 0.5 * diff)
    torch.testing.assert_close(state["blocks.0.attn1.to_q.bias"], 0.5 * diff_b)
    assert torch.equal(state["proj_out.weight"], before["proj_out.weight"])
    # Wan2.2 A14B: keys without a component are transformer's, as diffusers loads them
    second = {k: v.clone() for k, v in before.items()}
    assert merge_lora(second, lora, "transformer_2") == 1
    torch.testing.assert_close(second["proj_out.weight"], before["proj_out.weight"] + diff)
    assert torch.equal(second["blocks.0.attn1.to_q.weight"], before["blocks.0.attn1.to_q.weight"])


@pytest.mark.slow
def test_run_time_target_transformer_2_changes_only_the_low_noise_expert(tiny_model, tmp_path):
    """Wan2.2 A14B: a LoRA file without component prefixes set with target transformer_2 (the
    low-noise file of a pair) changes that expert only; unmerge restores both bit for bit."""
    from sglang_diffusion.loader.lora import LoraSpec
    from tests.server.conftest import write_tiny_lora

    model = tiny_model("wan2.2-t2v-a14b")
    pipe = build_pipeline(ServerArgs(model_path=str(model)), Platform.current())
    experts = pipe.lora.models
    base = {name: {k: v.clone() for k, v in m.state_dict().items()} for name, m in experts.items()}
    path = str(write_tiny_lora(model, tmp_path / "low_noise.safetensors", 1))
    listed = pipe.lora.set([LoraSpec("low", path, target="transformer_2", strength=0.5)])
    assert list(listed["active"]) == ["transformer_2"]
    changed = {name: [k for k, v in m.state_dict().items() if not torch.equal(v, base[name][k])]
               for name, m in experts.items()}
    assert changed["transformer"] == [] and changed["transformer_2"]
    pipe.lora.unmerge()
    assert all(torch.equal(v, base[name][k]) for name, m in experts.items() for k, v in m.state_dict().items())
