"""`sglang generate` in a subprocess, as a user runs it, on tiny models."""

import json
import re
import shutil

import imageio.v3 as iio
import pytest
from PIL import Image

from tests.conftest import run_cli

pytestmark = pytest.mark.slow


def test_generate_writes_mp4_with_requested_frames_size_and_fps(tiny_model, tmp_path):
    proc = run_cli("generate", "--model-path", tiny_model("wan2.1-t2v"), "--backend", "diffusers",
                   "--prompt", "A curious raccoon", "--height", 64, "--width", 96, "--num-frames", 9,
                   "--fps", 12, "--num-inference-steps", 2, "--output-path", tmp_path,
                   "--output-file-name", "A curious raccoon.mp4")
    assert proc.returncode == 0, proc.stderr
    path = tmp_path / "A curious raccoon.mp4"
    frames = iio.imread(path, plugin="pyav")
    assert frames.shape == (9, 64, 96, 3)
    assert iio.immeta(path, plugin="pyav")["fps"] == 12
    assert str(path) in proc.stdout and "96x64" in proc.stdout and "9 frames" in proc.stdout
    assert "seed 1024" in proc.stdout and "denoising" in proc.stdout


def test_generate_writes_png_of_requested_size_for_flux(tiny_model, tmp_path):
    proc = run_cli("generate", "--model-path", tiny_model("flux.1"), "--prompt", "a red cube",
                   "--height", 48, "--width", 64, "--num-inference-steps", 2, "--output-path", tmp_path,
                   "--seed", 5)
    assert proc.returncode == 0, proc.stderr
    (path,) = tmp_path.glob("*.png")
    assert path.name == "a_red_cube_5.png"
    assert Image.open(path).size == (64, 48)
    assert "native pipeline for FluxPipeline" in proc.stderr  # backend auto runs FLUX natively, and says so


def test_command_line_beats_config_file_in_the_written_file(tiny_model, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(f"model_path: {tiny_model('flux.1')}\nprompt: a cube\nheight: 32\nwidth: 48\n"
                      f"num_inference_steps: 1\noutput_path: {tmp_path}\noutput_file_name: out.png\n")
    proc = run_cli("generate", "--config", config, "--height", 64)
    assert proc.returncode == 0, proc.stderr
    assert Image.open(tmp_path / "out.png").size == (48, 64)


def guide_config(model_path, output_path, **overrides) -> dict:
    """The CLI guide's config.json (num_gpus 2, sp_size 2, vae_tiling, vae_sp), with the model
    swapped for a tiny one and sizes shrunk to CPU scale; `overrides` replace its keys."""
    config = {
        "model_path": str(model_path), "prompt": "A beautiful woman in a red dress walking down a street",
        "output_path": str(output_path), "num_gpus": 2, "sp_size": 2, "tp_size": 1, "num_frames": 5, "height": 32,
        "width": 32, "num_inference_steps": 2, "seed": 1024, "fps": 24, "precision": "bf16", "vae_precision": "fp16",
        "vae_tiling": True, "vae_sp": True,
        "vae_config": {"load_encoder": False, "load_decoder": True, "tile_sample_min_height": 256,
                       "tile_sample_min_width": 256},
        "text_encoder_precisions": ["fp16"], "mask_strategy_file_path": None, "enable_torch_compile": False,
    }
    return {**config, **overrides}


def test_guide_config_json_example_runs_on_a_tiny_model(tiny_model, tmp_path):
    """The CLI guide's config.json on one rank: a single rank keeps this test fast (vae_sp has
    nothing to split there and says so). The guide's 2-rank config (num_gpus/sp_size 2, vae_sp
    splitting the VAE's tiles) runs in tests/distributed/test_engine_parallel.py."""
    path = tmp_path / "config.json"
    path.write_text(json.dumps(guide_config(tiny_model("wan2.1-t2v"), tmp_path, num_gpus=1, sp_size=1)))
    proc = run_cli("generate", "--config", path)
    assert proc.returncode == 0, proc.stderr
    (video,) = tmp_path.glob("*.mp4")
    assert iio.imread(video, plugin="pyav").shape == (5, 32, 32, 3)
    # the measured precision policy (tests/test_precision.py), either way it decides
    assert re.search(r"text_encoder: float16 (requested, running in fp32 on the CPU|on the CPU \(requested)", proc.stderr)
    assert "vae_sp: one sequence-parallel rank, nothing to split" in proc.stderr


@pytest.mark.parametrize("argv,message", [
    (["--model-path", "/nonexistent/model", "--prompt", "x"], "cannot find model '/nonexistent/model'"),
    (["--prompt", "x", "--dit-precison", "fp16"], "did you mean '--dit-precision'"),
    (["--prompt", "x", "--num-gpus", "4", "--ulysses-degree", "2", "--ring-degree", "1", "--sp-degree", "4"],
     "must equal sp_degree"),
    (["--prompt", "x", "--height", "tall"], "--height: expected an integer"),
    (["--prompt", "x", "--config", "/nonexistent.yaml"], "cannot read config file"),
])
def test_user_mistakes_exit_2_with_one_clear_line(argv, message):
    proc = run_cli("generate", *argv)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unknown_component_override_lists_the_valid_keys(tiny_model):
    proc = run_cli("generate", "--model-path", tiny_model("flux.1"), "--prompt", "x", "--vea-path", "/x")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "no component 'vea'" in proc.stderr and "vae" in proc.stderr and "transformer" in proc.stderr


def test_folder_without_model_index_is_a_clear_error(tmp_path):
    proc = run_cli("generate", "--model-path", tmp_path, "--prompt", "x")
    assert proc.returncode == 2 and "model_index.json is missing" in proc.stderr


def test_option_whose_capability_has_not_landed_says_not_supported_yet(tiny_model):
    proc = run_cli("generate", "--model-path", tiny_model("flux.1"), "--prompt", "x", "--backend", "diffusers",
                   "--num-gpus", "2", "--ulysses-degree", "2")
    assert proc.returncode == 2 and "not supported yet" in proc.stderr and "sequence parallelism" in proc.stderr
    assert "diffusers backend" in proc.stderr


def test_backend_sglang_without_native_pipeline_fails_clearly(tiny_model, tmp_path):
    # every family the factory builds is native now: a model_index.json of a class we do not run
    folder = tmp_path / "sd3"
    shutil.copytree(tiny_model("flux.1"), folder)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": "StableDiffusion3Pipeline"}))
    proc = run_cli("generate", "--model-path", folder, "--prompt", "x", "--backend", "sglang")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "no native pipeline for StableDiffusion3Pipeline" in proc.stderr


def test_help_lists_every_guide_flag():
    proc = run_cli("generate", "--help")
    assert proc.returncode == 0
    for flag in ["--model-path", "--lora-path", "--lora-nickname", "--num-gpus", "--tp-size", "--sp-degree",
                 "--ulysses-degree", "--ring-degree", "--attention-backend", "--attention-backend-config",
                 "--cache-dit-config", "--dit-precision", "--prompt", "--num-inference-steps", "--negative-prompt",
                 "--seed", "--height", "--width", "--num-frames", "--fps", "--output-path", "--save-output",
                 "--return-frames", "--config", "--output-file-name", "--text-encoder-cpu-offload",
                 "--pin-cpu-memory", "--backend", "--diffusers-attention-backend", "--trust-remote-code",
                 "--vae-tiling", "--vae-slicing", "--vae-precision", "--<component>-path"]:
        assert flag in proc.stdout, flag
    assert "(default: 1024)" in proc.stdout  # defaults are shown


def test_serve_help_lists_server_options():
    proc = run_cli("serve", "--help")
    assert proc.returncode == 0 and "--port" in proc.stdout and "30010" in proc.stdout


def test_generate_without_model_path_uses_the_shipped_demo_model_at_its_sizes(tmp_path):
    proc = run_cli("generate", "--prompt", "a red circle moving right on a blue background", "--num-inference-steps",
                   2, "--output-path", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert "demo model" in proc.stderr and "sglang_diffusion/demo/model" in proc.stderr
    (video,) = (tmp_path / "out").glob("*.mp4")
    assert iio.imread(video, plugin="pyav").shape == (17, 128, 128, 3)
