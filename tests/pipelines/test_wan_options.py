"""Engine options on the native Wan pipeline, each against the plain run: precisions, text-encoder
offload, VAE tiling (PSNR stated below), slicing and vae_config, and --attention-backend."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from sglang_diffusion import precision
from sglang_diffusion.config.sampling_params import SamplingParams
from sglang_diffusion.config.server_args import ServerArgs, VaeConfig
from sglang_diffusion.errors import ConfigError, InvalidRequestError
from sglang_diffusion.layers.attention import Attention
from sglang_diffusion.loader.offload import OffloadedModule
from sglang_diffusion.pipelines.registry import build_pipeline
from sglang_diffusion.platform import Platform

REQUEST = dict(prompt="waves on a beach", height=64, width=64, num_frames=5, num_inference_steps=2,
               guidance_scale=4.0, seed=3)
# Tiled decoding blends overlapping tiles, so it is close to, not equal to, the plain decode; the
# seams show more with random weights than with a trained VAE. Measured on the tiny random-weight
# VAE at 160 x 160 with 128-pixel tiles every 96 pixels: 29.6 dB (diffusers' own tiled decode,
# which this is, gives the same).
TILING_MIN_PSNR = 28.0


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def build(model, **args):
    return build_pipeline(ServerArgs(model_path=str(model), **args), Platform.current())


@pytest.fixture(scope="module")
def t2v(tiny_model):
    return tiny_model("wan2.1-t2v")


@pytest.fixture(scope="module")
def plain(t2v):
    return build(t2v)


@pytest.fixture(scope="module")
def plain_frames(plain):
    return plain.generate(SamplingParams(**REQUEST)).frames


def test_reduced_precisions_run_as_fp32_on_a_cpu_with_a_warning(t2v, plain_frames, caplog):
    if precision.choose("bf16", precision.cpu_rates())[0] == "bf16":
        pytest.skip("this CPU runs bf16 fast (measured), so the policy keeps it: tests/test_precision.py")
    with caplog.at_level(logging.WARNING):
        pipe = build(t2v, dit_precision="bf16", vae_precision="fp16", text_encoder_precisions=["bf16"])
    assert pipe.describe()["dit_dtype"] == "float32"
    assert "transformer: bfloat16 requested, running in fp32" in caplog.text
    assert "vae: float16 requested" in caplog.text and "text_encoder: bfloat16 requested" in caplog.text
    assert np.array_equal(pipe.generate(SamplingParams(**REQUEST)).frames, plain_frames)


def test_text_encoder_offload_keeps_the_output(t2v, plain_frames, caplog):
    with caplog.at_level(logging.INFO):
        pipe = build(t2v, text_encoder_cpu_offload=True, pin_cpu_memory=True)
    assert "already runs from host memory" in caplog.text
    assert np.array_equal(pipe.generate(SamplingParams(**REQUEST)).frames, plain_frames)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="moving to a device needs one")
def test_offloaded_module_lives_on_the_host_and_visits_the_device():
    module = torch.nn.Linear(4, 4)
    offloaded = OffloadedModule(module, torch.device("cuda"), pin_memory=True)
    host_weight = module.weight.data
    assert host_weight.is_pinned()
    with offloaded.on_device() as m:
        assert m.weight.device.type == "cuda" and m(torch.ones(1, 4, device="cuda")).device.type == "cuda"
    assert module.weight.device.type == "cpu" and module.weight.data.data_ptr() == host_weight.data_ptr()


def test_vae_tiling_with_vae_config_tile_sizes_stays_close(t2v, plain, caplog):
    request = dict(REQUEST, height=160, width=160, num_inference_steps=1)
    expected = plain.generate(SamplingParams(**request)).frames
    with caplog.at_level(logging.INFO):
        tiled = build(t2v, vae_tiling=True, vae_config=VaeConfig(tile_sample_min_height=128,
                                                                  tile_sample_min_width=128))
    # the default stride (192) is longer than these tiles: it follows them (2 x 2 tiles on 160 pixels)
    assert "tile_sample_min_height=128, tile_sample_min_width=128, tile_sample_stride_height=96, " \
           "tile_sample_stride_width=96" in caplog.text
    frames = tiled.generate(SamplingParams(**request)).frames
    assert frames.shape == expected.shape
    assert not np.array_equal(frames, expected)  # tiles really ran
    value = psnr(expected, frames)
    assert value >= TILING_MIN_PSNR, f"tiled vs plain decode: {value:.1f} dB"
    with pytest.raises(ConfigError, match="tile_sample_min_num_frames"):
        build(t2v, vae_tiling=True, vae_config=VaeConfig(tile_sample_min_num_frames=8))


def test_vae_slicing_decodes_each_video_alone_with_the_same_result(t2v, plain):
    request = dict(REQUEST, num_outputs_per_prompt=2)
    expected = plain.generate(SamplingParams(**request)).frames
    frames = build(t2v, vae_slicing=True).generate(SamplingParams(**request)).frames
    assert frames.shape == (2, 5, 64, 64, 3)
    assert psnr(expected, frames) >= 60.0


def test_vae_config_encoder_and_decoder_switches(t2v, plain_frames, tiny_model, tmp_path):
    no_encoder = build(t2v, vae_config=VaeConfig(load_encoder=False))
    assert no_encoder.stages[-1].vae.encoder is None
    assert np.array_equal(no_encoder.generate(SamplingParams(**REQUEST)).frames, plain_frames)
    with pytest.raises(ConfigError, match="load_decoder=false"):
        build(t2v, vae_config=VaeConfig(load_decoder=False))
    with pytest.raises(ConfigError, match="image-to-video needs the VAE encoder"):
        build(tiny_model("wan2.1-i2v"), vae_config=VaeConfig(load_encoder=False))
    from PIL import Image

    image = tmp_path / "in.png"
    Image.new("RGB", (64, 64), (10, 200, 30)).save(image)
    ti2v = build(tiny_model("wan2.2-ti2v-5b"), vae_config=VaeConfig(load_encoder=False))
    with pytest.raises(InvalidRequestError, match="VAE encoder was not loaded"):
        ti2v.generate(SamplingParams(**REQUEST, image_path=str(image)))


def test_attention_backend_choice_reaches_every_attention_layer(t2v, plain):
    pipe = build(t2v, attention_backend="torch_sdpa")
    assert pipe.describe()["attention_backend"] == "torch_sdpa"
    dit = pipe.stages[-2].experts[0]
    layers = [m for m in dit.modules() if isinstance(m, Attention)]
    assert len(layers) == 2 * dit.config.num_layers
    assert all(m.backend.name == "torch_sdpa" for m in layers)
    a = pipe.run(SamplingParams(**REQUEST)).latents
    b = plain.run(SamplingParams(**REQUEST)).latents
    assert ((a - b).norm() / b.norm()).item() <= 1e-5
    with pytest.raises(ConfigError, match="unknown backend 'flash'"):  # a diffusers-only name
        build(t2v, attention_backend="flash")


# backend -> the largest relative error of the latents against the plain run (None: refused here)
ATTENTION_BACKENDS_ON_CPU = {
    "fa": 1e-5,  # our C++ kernel, exact
    "sage_attn": 1e-2,  # (measured 8e-4) the torch emulation of SageAttention's INT8 Q.K^T: approximate by design
    "triton": None,  # Triton kernels need CUDA (a CPU has only the interpreter)
}


@pytest.mark.parametrize("name", ATTENTION_BACKENDS_ON_CPU)
def test_each_attention_backend_runs_the_pipeline_or_says_why_not(t2v, plain, name):
    tolerance = ATTENTION_BACKENDS_ON_CPU[name]
    if tolerance is None:
        with pytest.raises(ConfigError, match=f"'{name}' cannot run on cpu.*CUDA"):
            build(t2v, attention_backend=name)
        return
    pipe = build(t2v, attention_backend=name)
    assert pipe.describe()["attention_backend"] == name
    a = pipe.run(SamplingParams(**REQUEST)).latents
    b = plain.run(SamplingParams(**REQUEST)).latents
    err = ((a - b).norm() / b.norm()).item()
    assert err <= tolerance
