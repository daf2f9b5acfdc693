"""The tiny-model factory: every family's `tiny` folder loads with diffusers' own
DiffusionPipeline and generates; builds are reproducible; model_index.json and the `full`
configs mirror the real checkpoints."""

import importlib.util
import json
import pathlib

import diffusers
import numpy as np
import pytest
import torch
from PIL import Image

from sglang_diffusion.errors import ConfigError
from sglang_diffusion.testing import FAMILIES, PRESETS, TINY_SAMPLING, build_model, cached_model, model_configs
from sglang_diffusion.testing.qwen_image import EDIT_PIPELINES

VIDEO_FAMILIES = ("wan2.1-t2v", "wan2.1-i2v", "wan2.2-t2v-a14b", "wan2.2-ti2v-5b", "hunyuanvideo")
# Image edits encode their input at a 1024 x 1024 area whatever the output size: seconds even when tiny.
EDIT_FAMILIES = tuple(EDIT_PIPELINES)  # qwen-image-edit, -edit-plus, -edit-2511 (Edit-Plus on a zero_cond_t DiT)
# FLUX.1 Kontext takes an input image too, and scales its output to max_area (1024 x 1024 unless given).
IMAGE_INPUT_FAMILIES = (*EDIT_FAMILIES, "flux.1-kontext")


def _dit_index(class_name, encoders, transformer, vae, scheduler="FlowMatchEulerDiscreteScheduler", **others) -> dict:
    """A real checkpoint's model_index.json, less _diffusers_version: diffusers' scheduler,
    transformer and VAE, transformers' (text encoder, tokenizer) pairs named text_encoder,
    tokenizer, then text_encoder_2, tokenizer_2."""
    index = {"_class_name": class_name, "scheduler": ["diffusers", scheduler]}
    for i, (encoder, tokenizer) in enumerate(encoders):
        suffix = f"_{i + 1}" if i else ""
        index[f"text_encoder{suffix}"] = ["transformers", encoder]
        index[f"tokenizer{suffix}"] = ["transformers", tokenizer]
    return {**index, "transformer": ["diffusers", transformer], "vae": ["diffusers", vae], **others}


def _wan_index(class_name="WanPipeline", **others) -> dict:
    umt5 = [("UMT5EncoderModel", "T5TokenizerFast")]
    scheduler = "UniPCMultistepScheduler"
    return _dit_index(class_name, umt5, "WanTransformer3DModel", "AutoencoderKLWan", scheduler, **others)


_CLIP_L = ("CLIPTextModel", "CLIPTokenizer")
REAL_MODEL_INDEX = {
    "wan2.1-t2v": _wan_index(),
    "wan2.1-i2v": _wan_index(
        "WanImageToVideoPipeline",
        image_encoder=["transformers", "CLIPVisionModel"],
        image_processor=["transformers", "CLIPImageProcessor"],
    ),
    "wan2.2-t2v-a14b": _wan_index(
        transformer_2=["diffusers", "WanTransformer3DModel"], boundary_ratio=0.875, expand_timesteps=False
    ),
    "wan2.2-ti2v-5b": _wan_index(transformer_2=[None, None], boundary_ratio=None, expand_timesteps=True),
    "hunyuanvideo": _dit_index(
        "HunyuanVideoPipeline",
        [("LlamaModel", "LlamaTokenizerFast"), _CLIP_L],
        "HunyuanVideoTransformer3DModel",
        "AutoencoderKLHunyuanVideo",
    ),
    "flux.1": _dit_index(
        "FluxPipeline", [_CLIP_L, ("T5EncoderModel", "T5TokenizerFast")], "FluxTransformer2DModel", "AutoencoderKL"
    ),
    "flux.1-kontext": _dit_index(
        "FluxKontextPipeline", [_CLIP_L, ("T5EncoderModel", "T5TokenizerFast")], "FluxTransformer2DModel",
        "AutoencoderKL"
    ),
    "flux.2": _dit_index(
        "Flux2Pipeline",
        [("Mistral3ForConditionalGeneration", "PixtralProcessor")],
        "Flux2Transformer2DModel",
        "AutoencoderKLFlux2",
    ),
    "qwen-image": _dit_index(
        "QwenImagePipeline",
        [("Qwen2_5_VLForConditionalGeneration", "Qwen2Tokenizer")],
        "QwenImageTransformer2DModel",
        "AutoencoderKLQwenImage",
    ),
    **{family: _dit_index(
        cls,
        [("Qwen2_5_VLForConditionalGeneration", "Qwen2Tokenizer")],
        "QwenImageTransformer2DModel",
        "AutoencoderKLQwenImage",
        processor=["transformers", "Qwen2VLProcessor"],
    ) for family, cls in EDIT_PIPELINES.items()},
}

# The real transformers' config.json numbers.
REAL_TRANSFORMER = {
    "wan2.1-t2v": dict(num_layers=30, num_attention_heads=12, attention_head_dim=128, ffn_dim=8960,
                       in_channels=16, out_channels=16, text_dim=4096, image_dim=None),
    "wan2.1-i2v": dict(num_layers=40, num_attention_heads=40, attention_head_dim=128, ffn_dim=13824,
                       in_channels=36, out_channels=16, image_dim=1280, added_kv_proj_dim=5120),
    "wan2.2-t2v-a14b": dict(num_layers=40, num_attention_heads=40, attention_head_dim=128, ffn_dim=13824,
                            in_channels=16, out_channels=16),
    "wan2.2-ti2v-5b": dict(num_layers=30, num_attention_heads=24, attention_head_dim=128, ffn_dim=14336,
                           in_channels=48, out_channels=48),
    "hunyuanvideo": dict(num_layers=20, num_single_layers=40, num_refiner_layers=2, num_attention_heads=24,
                         attention_head_dim=128, text_embed_dim=4096, pooled_projection_dim=768,
                         rope_axes_dim=[16, 56, 56], guidance_embeds=True),
    "flux.1": dict(num_layers=19, num_single_layers=38, num_attention_heads=24, attention_head_dim=128,
                   in_channels=64, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True),
    "flux.2": dict(num_layers=8, num_single_layers=48, num_attention_heads=48, attention_head_dim=128,
                   in_channels=128, joint_attention_dim=15360, axes_dims_rope=[32, 32, 32, 32]),
    "qwen-image": dict(num_layers=60, num_attention_heads=24, attention_head_dim=128, in_channels=64,
                       out_channels=16, joint_attention_dim=3584, guidance_embeds=False),
}  # fmt: skip
REAL_TRANSFORMER.update(dict.fromkeys(EDIT_FAMILIES, REAL_TRANSFORMER["qwen-image"]))  # the edits keep its DiT
REAL_TRANSFORMER["qwen-image-edit-2511"] = {**REAL_TRANSFORMER["qwen-image"], "zero_cond_t": True}
REAL_TRANSFORMER["flux.1-kontext"] = REAL_TRANSFORMER["flux.1"]  # FLUX.1 Kontext [dev]: FLUX.1-dev's architecture
# Parameter counts of the real transformers (FLUX.1-dev: 11,901,408,320; Wan2.1-T2V-1.3B: 1.42B).
REAL_TRANSFORMER_PARAMS = {"wan2.1-t2v": 1_418_996_800, "flux.1": 11_901_408_320}


def _load(path: pathlib.Path):
    """DiffusionPipeline.from_pretrained, except for a PixtralProcessor without torchvision:
    transformers cannot build that class then, and diffusers rejects any stand-in for it,
    so the pipeline is put together from its folders with the tokenizer alone."""
    index = json.loads((path / "model_index.json").read_text())
    if index.get("processor") == ["transformers", "Qwen2VLProcessor"] and not importlib.util.find_spec("torchvision"):
        # Qwen2VLProcessor needs torchvision too: our processor (same call) stands in for it
        from sglang_diffusion.models.text_encoders.qwen2_vl_processor import QwenVLProcessor

        pipe = diffusers.DiffusionPipeline.from_pretrained(path, processor=None)
        pipe.processor = QwenVLProcessor.from_folder(path / "processor", pipe.tokenizer)
        return pipe
    if index.get("tokenizer") != ["transformers", "PixtralProcessor"] or importlib.util.find_spec("torchvision"):
        return diffusers.DiffusionPipeline.from_pretrained(path)
    import transformers

    kwargs = {}
    for name, value in index.items():
        if name.startswith("_"):
            continue
        if not isinstance(value, list):
            kwargs[name] = value
        elif value == ["transformers", "PixtralProcessor"]:
            kwargs[name] = transformers.AutoTokenizer.from_pretrained(path / name)
        elif value[0] is not None:
            library = diffusers if value[0] == "diffusers" else transformers
            kwargs[name] = getattr(library, value[1]).from_pretrained(path / name)
    return getattr(diffusers, index["_class_name"])(**kwargs)


def _generate(pipe, family: str) -> np.ndarray:
    kwargs = dict(TINY_SAMPLING[family])
    if family == "wan2.1-i2v" or family in IMAGE_INPUT_FAMILIES:
        kwargs["image"] = Image.new("RGB", (kwargs["width"], kwargs["height"]), (200, 120, 40))
    if family == "flux.1-kontext":
        kwargs["max_area"] = kwargs["width"] * kwargs["height"]
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        prompt="a cat dancing on the beach", generator=torch.Generator().manual_seed(0), output_type="np", **kwargs
    )
    return np.asarray(out.frames if family in VIDEO_FAMILIES else out.images)


def _files(folder: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("family", [pytest.param(f, marks=pytest.mark.slow) if f in EDIT_FAMILIES else f
                                    for f in FAMILIES])
def test_tiny_model_loads_with_diffusers_and_generates_with_every_transformer(family, tiny_model):
    pipe = _load(tiny_model(family))
    # Wan2.2 A14B's two experts both denoise: the high-noise one above t = 875, the other below.
    calls = {name: 0 for name in ("transformer", "transformer_2") if getattr(pipe, name, None) is not None}
    for name in calls:
        getattr(pipe, name).register_forward_hook(lambda *_, name=name: calls.__setitem__(name, calls[name] + 1))
    frames = _generate(pipe, family)
    s = TINY_SAMPLING[family]
    if family in VIDEO_FAMILIES:
        assert frames.shape == (1, s["num_frames"], s["height"], s["width"], 3)
    else:
        assert frames.shape == (1, s["height"], s["width"], 3)
    assert np.isfinite(frames).all()
    assert len(calls) == (2 if family == "wan2.2-t2v-a14b" else 1) and all(calls.values())


@pytest.mark.parametrize("family", FAMILIES)
def test_model_index_mirrors_the_real_checkpoint(family, tiny_model):
    index = json.loads((tiny_model(family) / "model_index.json").read_text())
    assert index.pop("_diffusers_version") == diffusers.__version__
    assert index == REAL_MODEL_INDEX[family]


@pytest.mark.parametrize("family", FAMILIES)
def test_same_seed_builds_byte_identical_folder(family, tiny_model, tmp_path):
    cached = {k: v for k, v in _files(tiny_model(family)).items() if not k.startswith(".")}
    assert _files(build_model(family, tmp_path / "again", seed=0)) == cached


def test_other_seed_changes_weights_but_not_configs(tiny_model, tmp_path):
    reference = _files(tiny_model("flux.1"))
    other = _files(build_model("flux.1", tmp_path / "seed1", seed=1))
    weights = [name for name in other if name.endswith(".safetensors")]
    assert weights and all(other[name] != reference[name] for name in weights)
    assert all(other[name] == reference[name] for name in other if name.endswith(".json"))


def test_qwen_image_template_prefix_is_as_long_as_the_pipeline_drops(tiny_model):
    pipe = diffusers.DiffusionPipeline.from_pretrained(tiny_model("qwen-image"))
    prefix = pipe.prompt_template_encode.split("{}")[0]
    assert len(pipe.tokenizer(prefix).input_ids) == pipe.prompt_template_encode_start_idx


def test_hunyuanvideo_template_prefix_is_as_long_as_the_pipeline_crops(tiny_model):
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE
    from transformers import LlamaTokenizerFast

    tokenizer = LlamaTokenizerFast.from_pretrained(tiny_model("hunyuanvideo") / "tokenizer")
    prefix = DEFAULT_PROMPT_TEMPLATE["template"].split("{}")[0]
    assert len(tokenizer(prefix).input_ids) == DEFAULT_PROMPT_TEMPLATE["crop_start"]


@pytest.mark.parametrize("family", FAMILIES)
def test_full_transformer_config_matches_the_real_architecture(family):
    config = model_configs(family, "full")["transformer"]
    assert {key: config[key] for key in REAL_TRANSFORMER[family]} == REAL_TRANSFORMER[family]


@pytest.mark.parametrize("family", sorted(REAL_TRANSFORMER_PARAMS))
def test_full_transformer_has_the_real_parameter_count_on_meta_device(family):
    config = model_configs(family, "full")["transformer"]
    cls = getattr(diffusers, REAL_MODEL_INDEX[family]["transformer"][1])
    with torch.device("meta"):
        model = cls.from_config(config)
    assert sum(p.numel() for p in model.parameters()) == REAL_TRANSFORMER_PARAMS[family]


def test_full_wan22_ti2v_vae_is_the_48_channel_residual_vae():
    vae = model_configs("wan2.2-ti2v-5b", "full")["vae"]
    assert (vae["z_dim"], vae["is_residual"], vae["patch_size"], vae["scale_factor_spatial"]) == (48, True, 2, 16)
    assert (vae["base_dim"], vae["decoder_base_dim"]) == (160, 256)
    assert len(vae["latents_mean"]) == len(vae["latents_std"]) == 48


def test_small_preset_builds_a_dit_of_benchmark_size(tmp_path):
    folder = build_model("wan2.1-t2v", tmp_path / "small", preset="small")
    config = json.loads((folder / "transformer" / "config.json").read_text())
    assert config["num_layers"] >= 4 and 256 <= config["num_attention_heads"] * config["attention_head_dim"] <= 512
    assert (folder / "transformer" / "diffusion_pytorch_model.safetensors").is_file()


def test_unknown_family_raises_config_error_listing_families():
    with pytest.raises(ConfigError) as error:
        build_model("wan3", "/nonexistent")
    assert all(family in str(error.value) for family in FAMILIES)


def test_unknown_preset_raises_config_error_listing_presets(tmp_path):
    with pytest.raises(ConfigError) as error:
        cached_model("flux.1", "huge", cache_dir=tmp_path)
    assert all(preset in str(error.value) for preset in PRESETS)
    assert not list(tmp_path.iterdir())


def test_cached_model_defaults_to_xdg_cache_and_builds_once(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    folder = cached_model("flux.1")
    assert folder == tmp_path / "sglang_diffusion" / "models" / "flux.1-tiny"
    weights = folder / "transformer" / "diffusion_pytorch_model.safetensors"
    built_at = weights.stat().st_mtime_ns
    assert cached_model("flux.1") == folder and weights.stat().st_mtime_ns == built_at
    assert [p.name for p in folder.parent.iterdir()] == ["flux.1-tiny"]


def test_cached_model_rebuilds_a_folder_from_another_factory_version(tmp_path):
    folder = cached_model("flux.1", cache_dir=tmp_path)
    stamp = next(folder.glob(".*.json"))
    stamp.write_text(stamp.read_text().replace('"factory"', '"factory_old"'))
    (folder / "model_index.json").unlink()
    assert cached_model("flux.1", cache_dir=tmp_path) == folder
    assert (folder / "model_index.json").is_file()


def test_cached_model_keeps_the_folder_of_a_builder_that_finished_first(tmp_path, monkeypatch):
    """Two processes build at once: the loser finds the winner's folder at rename time."""
    import sglang_diffusion.testing as factory

    build = factory.build_model
    winner = {}

    def build_while_another_process_finishes_first(family, output_dir, preset="tiny", seed=0):
        monkeypatch.setattr(factory, "build_model", build)
        winner["folder"] = factory.cached_model(family, preset, cache_dir=tmp_path)
        winner["mtime"] = (winner["folder"] / "model_index.json").stat().st_mtime_ns
        return build(family, output_dir, preset, seed)

    monkeypatch.setattr(factory, "build_model", build_while_another_process_finishes_first)
    folder = factory.cached_model("flux.1", cache_dir=tmp_path)
    assert folder == winner["folder"] == tmp_path / "flux.1-tiny"
    assert (folder / "model_index.json").stat().st_mtime_ns == winner["mtime"]
    assert [p.name for p in tmp_path.iterdir()] == ["flux.1-tiny"]
