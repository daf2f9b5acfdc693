"""Native Qwen-Image pipelines against diffusers' on the tiny models, same seed: QwenImagePipeline
with true CFG on (a negative prompt) and off (none given, or scale 1), a non-square size, sizes
rounded as diffusers rounds them; QwenImageEditPipeline with one input image and
QwenImageEditPlusPipeline with two (diffusers given our torchvision-free Qwen2-VL processor,
since its own needs torchvision), and as Qwen-Image-Edit-2511 (the Edit-Plus pipeline on a
zero_cond_t DiT); the registry picks them with backend auto; `sglang generate`, also with one
input image on Qwen-Image-Edit."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from sglang_diffusion.config.sampling_params import SamplingParams
from sglang_diffusion.config.server_args import ServerArgs
from sglang_diffusion.errors import InvalidRequestError
from sglang_diffusion.pipelines.registry import build_pipeline
from sglang_diffusion.pipelines.stages.base import StagedPipeline
from sglang_diffusion.platform import Platform
from tests.conftest import run_cli

REQUEST = dict(prompt="a red fox in the snow", negative_prompt="blurry, low quality", height=64, width=96,
               num_inference_steps=3, true_cfg_scale=4.0, seed=11)
LATENT_TOL = 1e-4
MIN_PSNR = 40.0


def rel_err(a, b) -> float:
    return ((a.float() - b.float()).norm() / a.float().norm()).item()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.fixture(scope="module")
def folder(tiny_model):
    return tiny_model("qwen-image")


@pytest.fixture(scope="module")
def native(folder) -> StagedPipeline:
    return build_pipeline(ServerArgs(model_path=str(folder)), Platform.current())


@pytest.fixture(scope="module")
def reference(folder):
    import diffusers

    return diffusers.QwenImagePipeline.from_pretrained(folder)


def diffusers_run(pipe, request: dict):
    """diffusers on the same request: (final latents unpacked [B, C, 1, h, w], uint8 [B, H, W, 3])."""
    seen = {}

    def keep_latents(p, step, t, kwargs):
        seen["latents"] = kwargs["latents"]
        return kwargs

    kwargs = {k: v for k, v in request.items() if k not in ("seed", "image_path")}
    if "image_path" in request:
        paths = request["image_path"] if isinstance(request["image_path"], list) else [request["image_path"]]
        images = [Image.open(path).convert("RGB") for path in paths]
        kwargs["image"] = images if len(images) > 1 else images[0]
    out = pipe(**kwargs, output_type="np", callback_on_step_end=keep_latents,
               generator=torch.Generator("cpu").manual_seed(request["seed"])).images
    latents = pipe._unpack_latents(seen["latents"], request["height"], request["width"], pipe.vae_scale_factor)
    return latents, (np.clip(out, 0, 1) * 255).round().astype(np.uint8)


@pytest.mark.parametrize("case", ["true_cfg", "no_negative_prompt", "true_cfg_1"])
def test_native_matches_diffusers_with_the_same_seed(case, native, reference):
    request = dict(REQUEST)
    if case == "no_negative_prompt":
        request.pop("negative_prompt")  # guidance 4 but nothing to guide against: CFG off, as diffusers
    elif case == "true_cfg_1":
        request["true_cfg_scale"] = 1.0
    state = native.run(SamplingParams(**request))
    assert state.do_cfg == (case == "true_cfg")
    latents, frames = diffusers_run(reference, request)
    assert rel_err(latents, state.latents) <= LATENT_TOL
    assert state.frames.shape == (1, 1, 64, 96, 3)
    assert psnr(frames, state.frames[:, 0]) >= MIN_PSNR


def test_sizes_round_down_to_16_pixels_with_a_warning_and_images_have_one_frame(native, caplog):
    with caplog.at_level(logging.WARNING):
        state = native.run(SamplingParams(**dict(REQUEST, height=70, width=90, num_inference_steps=2)))
    assert "70 x 90" in caplog.text and "using 64 x 80" in caplog.text
    assert state.frames.shape == (1, 1, 64, 80, 3)
    with pytest.raises(InvalidRequestError, match="num_frames 5"):
        native.run(SamplingParams(**dict(REQUEST, num_frames=5)))
    with pytest.raises(InvalidRequestError, match="takes no input image"):
        native.run(SamplingParams(**dict(REQUEST, image_path="x.png")))
    with pytest.raises(InvalidRequestError, match="shift_terminal needs at least 2 steps"):  # NaN in diffusers
        native.run(SamplingParams(**dict(REQUEST, num_inference_steps=1)))


def test_registry_runs_qwen_image_natively_with_its_defaults(native):
    assert native.describe()["backend"] == "sglang" and native.describe()["pipeline"] == "QwenImagePipeline"
    assert native.family.name == "qwen-image" and native.family.defaults["true_cfg_scale"] == 4.0


@pytest.mark.slow
def test_generate_runs_natively_and_matches_the_diffusers_backend(folder, tmp_path):
    args = ("generate", "--model-path", folder, "--prompt", "a paper boat", "--negative-prompt", "blurry",
            "--height", 64, "--width", 64, "--num-inference-steps", 2, "--seed", 3, "--output-file-name", "i.png")
    images, logs = {}, {}
    for backend in ("auto", "diffusers"):
        proc = run_cli(*args, "--backend", backend, "--output-path", tmp_path / backend)
        assert proc.returncode == 0, proc.stderr
        images[backend], logs[backend] = np.asarray(Image.open(tmp_path / backend / "i.png")), proc.stderr
    assert "pipeline QwenImagePipeline on sglang backend (family qwen-image)" in logs["auto"]
    assert "on diffusers backend" in logs["diffusers"]
    assert images["auto"].shape == (64, 64, 3)
    assert psnr(images["auto"], images["diffusers"]) >= MIN_PSNR


@pytest.fixture(scope="module")
def input_images(tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate([(48, 80), (40, 40)]):
        paths.append(str(folder / f"in{i}.png"))
        Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(paths[-1])
    return paths


@pytest.mark.slow
@pytest.mark.parametrize("family,cls,images", [("qwen-image-edit", "QwenImageEditPipeline", 1),
                                               ("qwen-image-edit-plus", "QwenImageEditPlusPipeline", 2),
                                               ("qwen-image-edit-2511", "QwenImageEditPlusPipeline", 2)])
def test_edit_matches_diffusers_with_the_same_seed(family, cls, images, tiny_model, input_images):
    folder = tiny_model(family)
    zero_cond_t = json.loads((folder / "transformer" / "config.json").read_text()).get("zero_cond_t", False)
    assert zero_cond_t == (family == "qwen-image-edit-2511")
    pipe = build_pipeline(ServerArgs(model_path=str(folder)), Platform.current())
    assert pipe.describe()["pipeline"] == cls and pipe.describe()["backend"] == "sglang"
    paths = input_images[:images]
    request = dict(REQUEST, prompt="make the sky red", num_inference_steps=2,
                   image_path=paths if images > 1 else paths[0])
    state = pipe.run(SamplingParams(**request))
    assert len(state.image_embeds) == images  # one reference latent per input image
    backend = build_pipeline(ServerArgs(model_path=str(folder), backend="diffusers"), Platform.current())
    assert type(backend.pipe.processor).__name__ == "QwenVLProcessor"  # without torchvision: our stand-in
    reference = backend.pipe
    latents, frames = diffusers_run(reference, request)
    assert rel_err(latents, state.latents) <= LATENT_TOL
    assert psnr(frames, state.frames[:, 0]) >= MIN_PSNR


def test_edit_requests_refused_clearly(tiny_model, input_images):
    pipe = build_pipeline(ServerArgs(model_path=str(tiny_model("qwen-image-edit"))), Platform.current())
    with pytest.raises(InvalidRequestError, match="needs an input image"):
        pipe.run(SamplingParams(prompt="x"))
    with pytest.raises(InvalidRequestError, match="2 images given; Qwen-Image-Edit takes one"):
        pipe.run(SamplingParams(prompt="x", image_path=input_images))


def test_vl_processor_expands_each_image_to_its_merged_patches(tiny_model, input_images):
    """The torchvision-free processor: one <|image_pad|> per 2x2 merged 14-pixel patch, in order."""
    from sglang_diffusion.models.text_encoders.qwen2_vl_processor import IMAGE_TOKEN, QwenVLProcessor
    from sglang_diffusion.pipelines.stages.qwen_prompt import VISION
    from transformers import AutoTokenizer

    folder = tiny_model("qwen-image-edit-plus")
    processor = QwenVLProcessor.from_folder(folder / "processor", AutoTokenizer.from_pretrained(folder / "tokenizer"))
    images = [Image.open(p).convert("RGB").resize((112 * (i + 1), 56)) for i, p in enumerate(input_images)]
    inputs = processor(text=[f"a {VISION} b {VISION}"], images=images)
    assert inputs["image_grid_thw"].tolist() == [[1, 4, 8], [1, 4, 16]]
    pad = processor.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    assert int((inputs["input_ids"] == pad).sum()) == (4 * 8 + 4 * 16) // 4
    assert inputs["pixel_values"].shape[0] == 4 * 8 + 4 * 16


@pytest.mark.slow
@pytest.mark.parametrize("family,cls,images", [("qwen-image-edit", "QwenImageEditPipeline", 1),
                                               ("qwen-image-edit-plus", "QwenImageEditPlusPipeline", 2)])
def test_generate_edit_with_image_paths_natively_matches_the_diffusers_backend(family, cls, images, tiny_model,
                                                                               input_images, tmp_path):
    paths = [a for path in input_images[:images] for a in ("--image-path", path)]
    args = ("generate", "--model-path", tiny_model(family), "--prompt", "put b in a", *paths, "--height", 48,
            "--width", 64, "--num-inference-steps", 2, "--seed", 3, "--output-file-name", "e.png")
    images, logs = {}, {}
    for backend in ("auto", "diffusers"):
        proc = run_cli(*args, "--backend", backend, "--output-path", tmp_path / backend)
        assert proc.returncode == 0, proc.stderr
        images[backend], logs[backend] = np.asarray(Image.open(tmp_path / backend / "e.png")), proc.stderr
    assert f"pipeline {cls} on sglang backend (family {family})" in logs["auto"]
    assert images["auto"].shape == (48, 64, 3)
    assert psnr(images["auto"], images["diffusers"]) >= MIN_PSNR
