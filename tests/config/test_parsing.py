"""Every flag and config key parses into its field; files and flags combine with the right precedence."""

import dataclasses
import json

import pytest

from sglang_diffusion.cli.args import build_parser, parse
from sglang_diffusion.config.loading import load_config_file
from sglang_diffusion.config.sampling_params import SamplingParams
from sglang_diffusion.config.server_args import ServerArgs, VaeConfig
from sglang_diffusion.errors import ConfigError


def _parse(*argv):
    return parse(build_parser("sglang generate", "", sampling=True), list(argv))


# One command-line form and its expected field value for every option of the CLI guide and more.
FLAG_CASES = [
    (["--model-path", "org/model"], "model_path", "org/model"),
    (["--lora-path", "/l.safetensors"], "lora_path", "/l.safetensors"),
    (["--lora-nickname", "style"], "lora_nickname", "style"),
    (["--num-gpus", "4"], "num_gpus", 4),
    (["--num-gpus", "2", "--tp-size", "2"], "tp_size", 2),
    (["--num-gpus", "2", "--sp-degree", "2"], "sp_degree", 2),
    (["--num-gpus", "2", "--sp-size", "2"], "sp_degree", 2),
    (["--num-gpus", "4", "--ulysses-degree=2", "--ring-degree=2"], "ulysses_degree", 2),
    (["--num-gpus", "4", "--ulysses-degree=2", "--ring-degree=2"], "ring_degree", 2),
    (["--num-gpus", "2", "--enable-cfg-parallel"], "enable_cfg_parallel", True),
    (["--attention-backend", "torch_sdpa"], "attention_backend", "torch_sdpa"),
    (["--attention-backend-config", "k=v"], "attention_backend_config", "k=v"),
    (["--cache-dit-config", "c.yaml"], "cache_dit_config", "c.yaml"),
    (["--dit-precision", "fp16"], "dit_precision", "fp16"),
    (["--precision", "fp32"], "dit_precision", "fp32"),
    (["--vae-precision", "bf16"], "vae_precision", "bf16"),
    (["--text-encoder-precisions", "fp16", "bf16"], "text_encoder_precisions", ["fp16", "bf16"]),
    (["--vae-tiling"], "vae_tiling", True),
    (["--no-vae-tiling"], "vae_tiling", False),
    (["--vae-slicing"], "vae_slicing", True),
    (["--vae-sp"], "vae_sp", True),
    (["--vae-config", "load_encoder=false,tile_sample_min_height=256"], "vae_config",
     VaeConfig(load_encoder=False, tile_sample_min_height=256)),
    (["--vae-config", '{"load_decoder": true, "tile_sample_min_width": 128}'], "vae_config",
     VaeConfig(tile_sample_min_width=128)),
    (["--text-encoder-cpu-offload"], "text_encoder_cpu_offload", True),
    (["--text-encoder-cpu-offload", "--pin-cpu-memory"], "pin_cpu_memory", True),
    (["--mask-strategy-file-path", "m.json"], "mask_strategy_file_path", "m.json"),
    (["--enable-torch-compile"], "enable_torch_compile", True),
    (["--backend", "diffusers"], "backend", "diffusers"),
    (["--diffusers-attention-backend", "flash"], "diffusers_attention_backend", "flash"),
    (["--trust-remote-code"], "trust_remote_code", True),
    (["--host", "0.0.0.0"], "host", "0.0.0.0"),
    (["--port", "8000"], "port", 8000),
    (["--vae-path", "fal/tiny-ae"], "component_paths", {"vae": "fal/tiny-ae"}),
    (["--text-encoder-2-path=/x/te2"], "component_paths", {"text_encoder_2": "/x/te2"}),
    (["--prompt", "A curious raccoon"], "prompt", "A curious raccoon"),
    (["--negative-prompt", "blurry"], "negative_prompt", "blurry"),
    (["--image-path", "in.png"], "image_path", "in.png"),
    (["--num-inference-steps", "6"], "num_inference_steps", 6),
    (["--guidance-scale", "3.5"], "guidance_scale", 3.5),
    (["--seed", "7"], "seed", 7),
    (["--height", "720"], "height", 720),
    (["--width", "1280"], "width", 1280),
    (["--num-frames", "45"], "num_frames", 45),
    (["--fps", "24"], "fps", 24),
    (["--output-path", "out/"], "output_path", "out/"),
    (["--output-file-name", "A curious raccoon.mp4"], "output_file_name", "A curious raccoon.mp4"),
    (["--save-output"], "save_output", True),
    (["--no-save-output"], "save_output", False),
    (["--return-frames"], "return_frames", True),
    (["--diffusers-kwargs", '{"cross_attention_kwargs": {"scale": 0.5}}'], "diffusers_kwargs",
     {"cross_attention_kwargs": {"scale": 0.5}}),
]


@pytest.mark.parametrize("argv,field,expected", FLAG_CASES, ids=[c[1] + ":" + c[0][0] for c in FLAG_CASES])
def test_flag_parses_into_its_field(argv, field, expected):
    server, sampling = _parse(*argv)
    target = server if hasattr(server, field) else sampling
    assert getattr(target, field) == expected


def test_every_field_is_a_flag_in_help():
    text = build_parser("sglang generate", "", sampling=True).format_help()
    for cls in (ServerArgs, SamplingParams):
        for f in dataclasses.fields(cls):
            assert "--" + f.name.replace("_", "-") in text, f.name


GUIDE_CONFIG = {
    "model_path": "FastVideo/FastHunyuan-diffusers", "prompt": "A beautiful woman in a red dress walking down a street",
    "output_path": "outputs/", "num_gpus": 2, "sp_size": 2, "tp_size": 1, "num_frames": 45, "height": 720,
    "width": 1280, "num_inference_steps": 6, "seed": 1024, "fps": 24, "precision": "bf16", "vae_precision": "fp16",
    "vae_tiling": True, "vae_sp": True,
    "vae_config": {"load_encoder": False, "load_decoder": True, "tile_sample_min_height": 256,
                   "tile_sample_min_width": 256},
    "text_encoder_precisions": ["fp16", "fp16"], "mask_strategy_file_path": None, "enable_torch_compile": False,
}


def _check_guide_config(server, sampling):
    assert server.model_path == "FastVideo/FastHunyuan-diffusers"
    assert (server.num_gpus, server.sp_degree, server.tp_size) == (2, 2, 1)
    assert server.dit_precision == "bf16" and server.vae_precision == "fp16"
    assert server.vae_tiling and server.vae_sp
    assert server.vae_config == VaeConfig(load_encoder=False, load_decoder=True, tile_sample_min_height=256,
                                          tile_sample_min_width=256)
    assert server.text_encoder_precisions == ["fp16", "fp16"]
    assert (sampling.num_frames, sampling.height, sampling.width, sampling.fps) == (45, 720, 1280, 24)
    assert (sampling.num_inference_steps, sampling.seed) == (6, 1024)


def test_guide_json_config_parses(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(GUIDE_CONFIG))
    _check_guide_config(*_parse("--config", str(path)))


def test_guide_yaml_config_parses(tmp_path):
    import yaml

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(GUIDE_CONFIG))
    _check_guide_config(*_parse("--config", str(path)))


def test_command_line_beats_config_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("height: 720\nwidth: 1280\nvae_path: /from/file\ntransformer_path: /t\n")
    server, sampling = _parse("--config", str(path), "--height", "480", "--vae-path", "/from/cli")
    assert sampling.height == 480 and sampling.width == 1280
    assert server.component_paths == {"vae": "/from/cli", "transformer": "/t"}


def test_family_defaults_fill_only_what_was_not_given():
    _, sampling = _parse("--height", "64")
    resolved = sampling.resolve({"height": 480, "width": 832, "num_frames": 81})
    assert (resolved.height, resolved.width, resolved.num_frames) == (64, 832, 81)
    assert sampling.width is None  # the user's record is not rewritten


def test_sp_layout_defaults_from_degrees():
    server, _ = _parse("--num-gpus", "4", "--ulysses-degree", "2", "--ring-degree", "2")
    assert server.sp_layout == (4, 2, 2)
    server, _ = _parse("--num-gpus", "2", "--sp-degree", "2")
    assert server.sp_layout == (2, 2, 1)


ERROR_CASES = [
    (["--dit-precison", "fp16"], "--dit-precision"),
    (["--hieght", "4"], "--height"),
    (["--height", "abc"], "--height: expected an integer"),
    (["--guidance-scale", "x"], "--guidance-scale: expected a number"),
    (["--dit-precision", "fp8"], "invalid choice"),
    (["--num-gpus", "4", "--sp-degree", "4", "--ulysses-degree", "2", "--ring-degree", "1"], "must equal sp_degree"),
    (["--num-gpus", "2", "--sp-degree", "4"], "does not divide num_gpus"),
    (["--num-gpus", "3", "--tp-size", "2"], "tp_size (2) does not divide num_gpus (3)"),
    (["--tp-size", "2", "--num-gpus", "2", "--text-encoder-cpu-offload"], "text_encoder_cpu_offload"),
    (["--pin-cpu-memory"], "pin_cpu_memory needs text_encoder_cpu_offload"),
    (["--text-encoder-precisions", "fp8"], "text_encoder_precisions[0]: 'fp8' is not one of"),
    (["--vae-config", "load_encodr=false"], "did you mean 'load_encoder'"),
    (["--output-file-name", "../x.mp4"], "output_file_name"),
    (["--output-file-name", "a/b.png"], "output_file_name"),
    (["--num-inference-steps", "0"], "num_inference_steps must be at least 1"),
    (["--attention-backend", "flashy"], "attention_backend: unknown backend 'flashy'"),
    (["--port", "70000"], "port must be between"),
    (["stray"], "unexpected argument 'stray'"),
]


@pytest.mark.parametrize("argv,message", ERROR_CASES, ids=[" ".join(c[0]) for c in ERROR_CASES])
def test_bad_command_line_is_a_config_error_naming_the_key(argv, message):
    with pytest.raises(ConfigError, match=None) as info:
        _parse(*argv)
    assert message in str(info.value)


FILE_ERROR_CASES = [
    ({"hieght": 4}, "unknown config key 'hieght'", "did you mean 'height'"),
    ({"height": "tall"}, "config key 'height'", "expected an integer"),
    ({"vae_tiling": "maybe"}, "config key 'vae_tiling'", "expected true or false"),
    ({"vae_config": {"tile_sample_min_height": "x"}}, "vae_config.tile_sample_min_height", "expected an integer"),
    ({"text_encoder_precisions": "fp16"}, "", ""),  # a single string is accepted as a one-item list
    ({"sp_size": 2, "sp_degree": 2}, "given twice", ""),
]


@pytest.mark.parametrize("data,part1,part2", FILE_ERROR_CASES)
def test_bad_config_file_key_is_a_config_error(tmp_path, data, part1, part2):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(data))
    if not part1:
        assert load_config_file(path)["text_encoder_precisions"] == ["fp16"]
        return
    with pytest.raises(ConfigError) as info:
        load_config_file(path)
    assert part1 in str(info.value) and part2 in str(info.value)


def test_unreadable_or_malformed_config_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config_file(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config_file(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config_file(listy)
