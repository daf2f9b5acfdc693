"""The guide's FLUX.2 tiny autoencoder override (`--vae-path fal/FLUX.2-Tiny-AutoEncoder`), on the
factory's stand-in folder (config.json with auto_map, safetensors, the remote module): our native
class without --trust-remote-code, the folder's own module with it, on both backends, for text to
image and for editing (its encoder makes the reference latents)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from sglang_diffusion.config.sampling_params import SamplingParams
from sglang_diffusion.config.server_args import ServerArgs
from sglang_diffusion.errors import ConfigError
from sglang_diffusion.models.vaes.flux2_tiny import Flux2TinyAsKL, Flux2TinyAutoEncoder
from sglang_diffusion.pipelines.registry import build_pipeline
from sglang_diffusion.platform import Platform
from sglang_diffusion.testing.flux2 import write_tiny_autoencoder
from tests.compare import psnr

REQUEST = dict(prompt="a blue teapot", height=64, width=48, num_inference_steps=2, seed=5, guidance_scale=2.5)


@pytest.fixture(scope="module")
def tiny_vae(tmp_path_factory):
    return write_tiny_autoencoder(tmp_path_factory.mktemp("tiny-vae"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    path = tmp_path_factory.mktemp("ref") / "ref.png"
    Image.fromarray((np.random.default_rng(0).random((64, 80, 3)) * 255).astype(np.uint8)).save(path)
    return str(path)


def test_the_folder_has_the_repository_layout_and_loads_natively(tiny_vae):
    config = json.loads((tiny_vae / "config.json").read_text())
    assert config["_class_name"] == "Flux2TinyAutoEncoder"
    assert config["auto_map"] == {"AutoModel": "flux2_tiny_autoencoder.Flux2TinyAutoEncoder"}
    assert (tiny_vae / "flux2_tiny_autoencoder.py").is_file()
    model = Flux2TinyAutoEncoder.from_pretrained(tiny_vae)
    assert {k.split(".")[0] for k in model.state_dict()} == {
        "tiny_vae", "extra_encoder", "extra_decoder", "residual_encoder", "residual_decoder"}
    x = torch.rand(1, 3, 64, 48) * 2 - 1
    z = model.encode(x).latent
    assert z.shape == (1, 128, 4, 3)  # the DiT's packed latent: 16x smaller, 128 channels
    assert model.decode(z).sample.shape == (1, 3, 64, 48)


def test_the_adapter_hands_the_packed_latent_through_untouched(tiny_vae):
    model = Flux2TinyAutoEncoder.from_pretrained(tiny_vae)
    vae = Flux2TinyAsKL(model)
    assert 2 ** (len(vae.config.block_out_channels) - 1) == 8 and vae.config.batch_norm_eps == 0
    assert torch.equal(vae.bn.running_mean, torch.zeros(128)) and torch.equal(vae.bn.running_var, torch.ones(128))
    x = torch.rand(1, 3, 64, 48) * 2 - 1
    unpacked = vae.encode(x).latent_dist.mode()  # [1, 32, 8, 6], as AutoencoderKLFlux2's
    assert torch.equal(torch.nn.functional.pixel_unshuffle(unpacked, 2), model.encode(x).latent)
    assert torch.equal(vae.decode(unpacked).sample, model.decode(model.encode(x).latent).sample)


def run(model_path, tiny_vae, backend: str, trust: bool, image_path=None):
    args = ServerArgs(model_path=str(model_path), backend=backend, component_paths={"vae": str(tiny_vae)},
                      trust_remote_code=trust)
    pipe = build_pipeline(args, Platform.current())
    vae = pipe.stages[-1].vae if backend == "sglang" else pipe.pipe.vae
    assert isinstance(vae, Flux2TinyAsKL)
    loaded = type(vae.tiny).__module__
    assert loaded.startswith("diffusers_modules") if trust else loaded == Flux2TinyAutoEncoder.__module__
    return pipe.generate(SamplingParams(**REQUEST, image_path=image_path)).frames


@pytest.mark.slow
def test_both_backends_decode_and_encode_with_it_natively_and_as_remote_code(tiny_model, tiny_vae, reference):
    model = tiny_model("flux.2")
    native = run(model, tiny_vae, "sglang", trust=False)
    assert native.shape == (1, 1, 64, 48, 3)
    default = build_pipeline(ServerArgs(model_path=str(model)), Platform.current()).generate(
        SamplingParams(**REQUEST)).frames
    assert psnr(default, native) < 20  # the override decodes, not the folder's VAE
    assert psnr(native, run(model, tiny_vae, "diffusers", trust=True)) >= 40
    edited = run(model, tiny_vae, "sglang", trust=True, image_path=reference)
    assert not np.array_equal(native, edited)  # the reference latents (the tiny encoder's) condition the DiT
    assert psnr(edited, run(model, tiny_vae, "diffusers", trust=False, image_path=reference)) >= 40


def test_custom_code_without_trust_remote_code_is_refused_with_the_flag_named(tiny_model, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "MyVAE", "auto_map": {"AutoModel": "my.MyVAE"}}))
    args = ServerArgs(model_path=str(tiny_model("flux.2")), component_paths={"vae": str(tmp_path)})
    with pytest.raises(ConfigError, match="MyVAE is custom code .* pass --trust-remote-code"):
        build_pipeline(args, Platform.current())
