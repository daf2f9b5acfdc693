"""Native Wan pipelines against diffusers' on the tiny models, same seed: Wan2.1 T2V and I2V,
Wan2.2 T2V-A14B (two experts) and TI2V-5B (text-only and image modes); CFG layouts; expert
switching; input correction and refusal; the registry picking native with backend auto."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from sglang_diffusion.config.sampling_params import SamplingParams
from sglang_diffusion.config.server_args import ServerArgs
from sglang_diffusion.errors import InvalidRequestError, RequestCancelled
from sglang_diffusion.pipelines.hooks import StepHooks
from sglang_diffusion.pipelines.registry import build_pipeline
from sglang_diffusion.pipelines.stages.base import StagedPipeline
from sglang_diffusion.pipelines.stages.denoising import CfgLayout, DenoisingStage
from sglang_diffusion.platform import Platform
from tests.compare import psnr, rel_err
from tests.pipelines.experts import expert_calls

REQUEST = dict(prompt="a red fox in the snow", negative_prompt="blurry", height=64, width=64, num_frames=9,
               num_inference_steps=4, guidance_scale=5.0, seed=11)
LATENT_TOL = 1e-4
MIN_PSNR = 40.0


@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("inputs") / "first.png"
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((48, 80, 3)) * 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def native(tiny_model):
    cache = {}

    def get(family) -> StagedPipeline:
        if family not in cache:
            cache[family] = build_pipeline(ServerArgs(model_path=str(tiny_model(family))), Platform.current())
        return cache[family]

    return get


def diffusers_run(folder, cls_name: str, request: dict, image=None):
    """diffusers' pipeline on the same request: (final latents, uint8 frames [B, F, H, W, 3])."""
    import diffusers

    pipe = getattr(diffusers, cls_name).from_pretrained(folder)
    seen = {}

    def keep_latents(p, step, t, kwargs):
        seen["latents"] = kwargs["latents"]
        return kwargs

    kwargs = {k: v for k, v in request.items() if k not in ("seed",)}
    if image is not None:
        kwargs["image"] = Image.open(image).convert("RGB")
    out = pipe(**kwargs, generator=torch.Generator("cpu").manual_seed(request["seed"]), output_type="np",
               callback_on_step_end=keep_latents).frames
    return seen["latents"], (np.clip(out, 0, 1) * 255).round().astype(np.uint8)


CASES = {  # id -> family, diffusers pipeline class, whether an image goes in
    "wan2.1-t2v": ("wan2.1-t2v", "WanPipeline", False),
    "wan2.1-i2v": ("wan2.1-i2v", "WanImageToVideoPipeline", True),
    "wan2.2-t2v-a14b": ("wan2.2-t2v-a14b", "WanPipeline", False),
    "wan2.2-ti2v-5b-text": ("wan2.2-ti2v-5b", "WanPipeline", False),
    # diffusers runs TI2V-5B's image mode through its I2V pipeline class
    "wan2.2-ti2v-5b-image": ("wan2.2-ti2v-5b", "WanImageToVideoPipeline", True),
}


@pytest.mark.parametrize("case", CASES)
def test_native_matches_diffusers_with_the_same_seed(case, native, tiny_model, image_path):
    family, cls_name, with_image = CASES[case]
    request = dict(REQUEST, guidance_scale_2=2.0) if family == "wan2.2-t2v-a14b" else REQUEST
    pipe = native(family)
    state = pipe.run(SamplingParams(**request, image_path=str(image_path) if with_image else None))
    latents, frames = diffusers_run(tiny_model(family), cls_name, request, image_path if with_image else None)
    # diffusers' callback sees the latents before TI2V puts the image's back in the first frame
    assert rel_err(state.conditioning.finalize(latents), state.latents) <= LATENT_TOL
    assert state.frames.shape == frames.shape == (1, 9, 64, 64, 3)
    assert psnr(frames, state.frames) >= MIN_PSNR


def _denoiser(pipe) -> DenoisingStage:
    return next(s for s in pipe.stages if isinstance(s, DenoisingStage))


def test_batched_and_two_pass_cfg_give_the_same_latents(native):
    pipe = native("wan2.1-t2v")
    stage, kept = _denoiser(pipe), _denoiser(pipe).cfg
    results = {}
    try:
        for layout in ("batched", "two_pass"):
            stage.cfg = CfgLayout(layout)
            results[layout] = pipe.run(SamplingParams(**REQUEST)).latents
    finally:
        stage.cfg = kept
    assert rel_err(results["two_pass"], results["batched"]) <= 1e-5


def test_auto_cfg_layout_is_measured_once_per_shape_before_any_step_and_kept(tmp_path):
    calls = []

    def probe(layout):
        calls.append(layout)
        return {"two_pass": 2.0, "batched": 3.0}[layout]

    cfg = CfgLayout("auto", cache_dir=tmp_path)
    assert cfg.choose("cpu|shape A", probe) == "two_pass"
    assert calls == ["two_pass", "batched"] * 3  # a warm-up of each, then two timed rounds
    assert cfg.choose("cpu|shape A", probe) == "two_pass" and len(calls) == 6  # kept, not measured again
    again = CfgLayout("auto", cache_dir=tmp_path)  # another process: read from the cache file
    assert again.choose("cpu|shape A", lambda layout: 1 / 0) == "two_pass"
    assert CfgLayout("batched", cache_dir=tmp_path).choose("cpu|shape B", lambda layout: 1 / 0) == "batched"


def test_auto_cfg_layout_gives_the_same_output_on_every_request(native):
    pipe = native("wan2.1-t2v")
    first, second = (pipe.run(SamplingParams(**REQUEST)).latents for _ in range(2))
    assert torch.equal(first, second)


def test_a14b_runs_high_noise_expert_above_boundary_and_low_noise_below(native):
    pipe = native("wan2.2-t2v-a14b")
    stage = _denoiser(pipe)
    with expert_calls(stage) as calls:
        state = pipe.run(SamplingParams(**REQUEST))
    boundary = 0.875 * 1000
    assert stage.boundary_timestep == boundary
    assert {i for i, _ in calls} == {0, 1}  # both experts ran
    assert all((i == 0) == (t >= boundary) for i, t in calls)
    assert state.params.guidance_scale_2 == 3.0  # the family default
    other = pipe.run(SamplingParams(**REQUEST, guidance_scale_2=1.5)).latents
    assert rel_err(state.latents, other) > 1e-3  # guidance_scale_2 drives the low-noise steps


def test_unsupported_frame_count_and_size_are_corrected_with_a_warning(native, caplog):
    pipe = native("wan2.1-t2v")
    request = dict(REQUEST, num_frames=10, height=70, width=90, num_inference_steps=1)
    with caplog.at_level(logging.WARNING):
        out = pipe.generate(SamplingParams(**request))
    assert out.frames.shape == (1, 9, 64, 80, 3)
    assert (out.params.num_frames, out.params.height, out.params.width) == (9, 64, 80)
    assert "num_frames 10" in caplog.text and "using 9" in caplog.text
    assert "70 x 90" in caplog.text and "using 64 x 80" in caplog.text


def test_ti2v_sizes_round_to_its_32_pixel_multiple(native):
    out = native("wan2.2-ti2v-5b").generate(SamplingParams(**dict(REQUEST, height=80, width=48,
                                                                   num_inference_steps=1)))
    assert out.frames.shape == (1, 9, 64, 32, 3)


def test_image_requests_refused_clearly(native, image_path):
    with pytest.raises(InvalidRequestError, match="needs an input image: pass image_path"):
        native("wan2.1-i2v").generate(SamplingParams(**REQUEST))
    with pytest.raises(InvalidRequestError, match="takes no input image"):
        native("wan2.1-t2v").generate(SamplingParams(**REQUEST, image_path=str(image_path)))
    with pytest.raises(InvalidRequestError, match="does not exist"):
        native("wan2.1-i2v").generate(SamplingParams(**REQUEST, image_path="/nonexistent.png"))
    with pytest.raises(InvalidRequestError, match="guidance_scale_2"):
        native("wan2.1-t2v").generate(SamplingParams(**REQUEST, guidance_scale_2=2.0))


def test_hooks_see_every_step_and_can_cancel(native):
    pipe, seen = native("wan2.1-t2v"), []
    pipe.generate(SamplingParams(**REQUEST), StepHooks(on_progress=lambda done, total: seen.append((done, total))))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    with pytest.raises(RequestCancelled, match="after 1 of 4"):
        pipe.generate(SamplingParams(**REQUEST), StepHooks(is_cancelled=lambda: True))


def test_several_videos_per_prompt(native):
    out = native("wan2.1-t2v").generate(SamplingParams(**dict(REQUEST, num_inference_steps=1),
                                                       num_outputs_per_prompt=2))
    assert out.frames.shape == (2, 9, 64, 64, 3)
    assert not np.array_equal(out.frames[0], out.frames[1])


def test_backend_auto_builds_the_native_pipeline_and_describes_it(native):
    for family, _, _ in CASES.values():
        info = native(family).describe()
        assert info["backend"] == "sglang"
        assert info["pipeline"] == ("WanImageToVideoPipeline" if family == "wan2.1-i2v" else "WanPipeline")
        assert info["family"] == family and info["attention_backend"]
