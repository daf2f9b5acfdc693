"""The sampling options of issue 19 point 4: each parses into its SamplingParams field from a flag, a
config key and a server request field, refuses a bad value, and changes the output where it
should: guidance_rescale against diffusers' rescale_noise_cfg, flow_shift against diffusers'
schedulers, boundary_ratio switching Wan2.2's experts, resolution shortcuts per family."""

from __future__ import annotations

import diffusers
import numpy as np
import pytest
import torch

from sglang_diffusion.cli.args import build_parser, parse
from sglang_diffusion.config.families import FAMILIES
from sglang_diffusion.config.loading import load_config_file
from sglang_diffusion.config.resolutions import resolution_size
from sglang_diffusion.config.sampling_params import SamplingParams
from sglang_diffusion.config.server_args import ServerArgs
from sglang_diffusion.errors import ConfigError, InvalidRequestError
from sglang_diffusion.pipelines.hooks import StepHooks
from sglang_diffusion.pipelines.registry import build_pipeline
from sglang_diffusion.pipelines.stages.base import GenerationState
from sglang_diffusion.pipelines.stages.denoising import DenoisingStage, rescale_noise_cfg
from sglang_diffusion.pipelines.stages.validation import InputValidationStage
from sglang_diffusion.platform import Platform
from sglang_diffusion.server.errors import APIError
from sglang_diffusion.server.params import ParamsBuilder
from sglang_diffusion.server.schemas import ImageGenerationRequest, VideoCreateRequest
from tests.compare import psnr, rel_err
from tests.pipelines.experts import expert_calls

REQUEST = dict(prompt="a red fox in the snow", negative_prompt="blurry", height=64, width=64, num_frames=5,
               num_inference_steps=4, guidance_scale=5.0, seed=11)
# option -> (flag value, the field's value)
OPTIONS = {
    "guidance_rescale": ("0.7", 0.7),
    "flow_shift": ("5", 5.0),
    "boundary_ratio": ("0.6", 0.6),
    "guidance_scale_2": ("2.5", 2.5),
    "true_cfg_scale": ("3", 3.0),
    "resolution": ("720p", "720p"),
    "output_quality": ("90", 90),
    "output_compression": ("20", 20),
}


@pytest.fixture(scope="module")
def native(tiny_model):
    cache = {}

    def get(family):
        if family not in cache:
            cache[family] = build_pipeline(ServerArgs(model_path=str(tiny_model(family))), Platform.current())
        return cache[family]

    return get


def _stage(pipe, cls):
    return next(s for s in pipe.stages if isinstance(s, cls))


@pytest.mark.parametrize("name", OPTIONS)
def test_option_parses_from_flag_config_key_and_request_field(name, tmp_path):
    text, value = OPTIONS[name]
    parser = build_parser("sglang generate", "", sampling=True)
    assert getattr(parse(parser, [f"--{name.replace('_', '-')}", text])[1], name) == value
    config = tmp_path / "c.json"
    config.write_text(f'{{"{name}": {value!r}}}'.replace("'", '"'))
    assert load_config_file(config)[name] == value
    builder = ParamsBuilder(ServerArgs(), SamplingParams(), None, "model")
    request = ImageGenerationRequest(prompt="x", **{name: value})
    assert getattr(builder.sampling(request), name) == value


def test_resolution_shortcut_flags_orientation_and_profile_options_parse():
    parser = build_parser("sglang generate", "", sampling=True)
    _, p = parse(parser, ["--1080p", "--orientation", "portrait", "--profile", "--num-profiled-timesteps", "3",
                          "--perf-dump-path", "perf.json"])
    assert (p.resolution, p.orientation, p.profile, p.num_profiled_timesteps, p.perf_dump_path) == \
        ("1080p", "portrait", True, 3, "perf.json")


@pytest.mark.parametrize("argv, message", [
    (["--guidance-rescale", "1.5"], "guidance_rescale must be at least 0 and at most 1"),
    (["--flow-shift", "0"], "flow_shift must be over 0"),
    (["--boundary-ratio", "-0.1"], "boundary_ratio must be at least 0"),
    (["--output-quality", "0"], "output_quality must be at least 1"),
    (["--output-compression", "101"], "output_compression must be at least 0 and at most 100"),
    (["--output-quality", "80", "--output-compression", "10"], "output_quality or output_compression, not both"),
    (["--720p", "--height", "480"], "resolution (720p) or height / width, not both"),
    (["--orientation", "portrait"], "orientation applies to a resolution shortcut"),
    (["--resolution", "721p"], "invalid choice"),
    (["--guidance-scale-2", "-1"], "guidance_scale_2 must not be negative"),
])
def test_bad_option_value_is_a_config_error_naming_it(argv, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse(build_parser("sglang generate", "", sampling=True), argv)


def test_request_resolution_replaces_the_servers_default_size_and_refuses_a_size_beside_it():
    builder = ParamsBuilder(ServerArgs(), SamplingParams(height=480, width=480), FAMILIES["wan2.1-t2v"], "model")
    p = builder.sampling(VideoCreateRequest(prompt="x", resolution="480p", orientation="portrait"))
    assert (p.resolution, p.orientation, p.height, p.width) == ("480p", "portrait", None, None)
    with pytest.raises(APIError, match="give resolution or size"):
        builder.sampling(VideoCreateRequest(prompt="x", resolution="480p", size="64x64"))
    small = ParamsBuilder(ServerArgs(max_resolution=1000), SamplingParams(), FAMILIES["wan2.1-t2v"], "model")
    with pytest.raises(APIError, match="width 1280"):
        small.sampling(VideoCreateRequest(prompt="x", resolution="720p"))


@pytest.mark.parametrize("family, name, orientation, size", [
    ("wan2.1-t2v", "480p", None, (480, 832)),  # Wan's own 480p
    ("wan2.1-t2v", "480p", "portrait", (832, 480)),
    ("wan2.1-t2v", "720p", None, (720, 1280)),
    ("wan2.2-ti2v-5b", "720p", None, (704, 1280)),  # TI2V-5B's own 720p
    ("hunyuanvideo", "540p", None, (544, 960)),
    ("flux.1", "1080p", None, (1088, 1088)),  # an image family with a square default: square
    ("flux.1", "1080p", "landscape", (1088, 1920)),
    (None, "360p", None, (368, 640)),  # no family: 16:9 landscape, multiples of 16
])
def test_resolution_maps_per_family_and_orientation(family, name, orientation, size):
    assert resolution_size(name, orientation, FAMILIES.get(family)) == size


def test_pipeline_makes_the_resolution_in_its_own_size_multiple(native):
    stage = _stage(native("wan2.2-ti2v-5b"), InputValidationStage)  # multiples of 32
    state = GenerationState(params=SamplingParams(prompt="x", resolution="360p", num_inference_steps=1),
                            hooks=StepHooks(), device=torch.device("cpu"))
    stage(state)
    assert (state.params.height, state.params.width) == (352, 640)


def test_rescale_noise_cfg_is_diffusers_formula():
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg as reference

    g = torch.Generator().manual_seed(0)
    cond, guided = torch.randn(2, 4, 3, 8, 8, generator=g), 3 * torch.randn(2, 4, 3, 8, 8, generator=g)
    for rescale in (0.0, 0.3, 1.0):
        torch.testing.assert_close(rescale_noise_cfg(guided, cond, rescale),
                                   reference(guided.clone(), cond, guidance_rescale=rescale), rtol=1e-6, atol=1e-6)


def test_guidance_rescale_rescales_each_guided_step(native):
    pipe = native("wan2.1-t2v")
    stage = _stage(pipe, DenoisingStage)
    seen = []
    guide = stage._guide

    def recording(cond, uncond, scale, rescale):
        out = guide(cond, uncond, scale, rescale)
        seen.append(rel_err(rescale_noise_cfg(uncond + scale * (cond - uncond), cond, 0.7), out))
        return out

    stage._guide = recording
    try:
        rescaled = pipe.run(SamplingParams(**REQUEST, guidance_rescale=0.7))
    finally:
        del stage._guide
    assert len(seen) == REQUEST["num_inference_steps"] and max(seen) < 1e-6
    plain = pipe.run(SamplingParams(**REQUEST))
    assert rel_err(plain.latents, rescaled.latents) > 1e-5
    assert torch.equal(pipe.run(SamplingParams(**REQUEST, guidance_rescale=0.0)).latents, plain.latents)


@pytest.mark.parametrize("family", ["wan2.1-t2v", "hunyuanvideo", "flux.1", "qwen-image"])
def test_flow_shift_sets_the_sigmas_diffusers_scheduler_makes_with_that_shift(native, family):
    """UniPC (Wan): its flow_shift; FlowMatchEuler (HunyuanVideo): its shift; the dynamically
    shifting FLUX / Qwen-Image schedulers: the same sigmas as diffusers' at that static shift."""
    from sglang_diffusion.pipelines.stages.timesteps import FlowShiftTimestepStage, TimestepPreparationStage

    pipe = native(family)
    stage = next(s for s in pipe.stages if isinstance(s, (TimestepPreparationStage, FlowShiftTimestepStage)))
    scheduler = stage.scheduler
    n, shift = 6, 4.5
    state = GenerationState(params=SamplingParams(prompt="x", num_inference_steps=n, flow_shift=shift),
                            hooks=StepHooks(), device=torch.device("cpu"), latents=torch.zeros(1, 16, 1, 8, 8))
    default = GenerationState(params=SamplingParams(prompt="x", num_inference_steps=n), hooks=StepHooks(),
                              device=torch.device("cpu"), latents=torch.zeros(1, 16, 1, 8, 8))
    stage(default)
    before = scheduler.sigmas.clone()
    stage(state)
    key = "flow_shift" if "flow_shift" in scheduler.config else "shift"
    # diffusers' class of that name (the native Wan path runs our own UniPC of the same name)
    reference = getattr(diffusers, type(scheduler).__name__).from_config(
        dict(scheduler.config), use_dynamic_shifting=False, **{key: shift})
    if family == "wan2.1-t2v":
        reference.set_timesteps(n)
    elif family == "hunyuanvideo":
        reference.set_timesteps(sigmas=np.linspace(1.0, 0.0, n + 1)[:-1])
    else:
        reference.set_timesteps(sigmas=np.linspace(1.0, 1 / n, n))
    torch.testing.assert_close(scheduler.sigmas, reference.sigmas, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(before, scheduler.sigmas)
    stage(default)  # the next request without flow_shift gets the model's own schedule back
    torch.testing.assert_close(scheduler.sigmas, before)


def test_boundary_ratio_switches_to_transformer_2_at_the_right_step(native):
    pipe = native("wan2.2-t2v-a14b")
    stage = _stage(pipe, DenoisingStage)
    with expert_calls(stage) as calls:
        request = dict(REQUEST, num_inference_steps=6)
        default = pipe.run(SamplingParams(**request))
        default_calls, calls[:] = list(calls), []
        moved = pipe.run(SamplingParams(**request, boundary_ratio=0.5))
    steps = [float(t) for t in moved.timesteps]
    first_low = next(i for i, t in enumerate(steps) if t < 500)  # 0.5 x 1000 training timesteps
    expected = [0 if i < first_low else 1 for i in range(len(steps))]  # one embedding a step, for both branches
    assert [i for i, _ in calls] == expected
    assert [i for i, _ in default_calls].count(0) != expected.count(0)  # model_index's 0.875 switches elsewhere
    assert rel_err(default.latents, moved.latents) > 1e-3


def test_boundary_ratio_and_flow_shift_match_the_diffusers_backend(native, tiny_model):
    request = dict(REQUEST, num_frames=5, boundary_ratio=0.6, flow_shift=7.0, guidance_scale_2=2.0)
    ours = native("wan2.2-t2v-a14b").generate(SamplingParams(**request)).frames
    theirs = build_pipeline(ServerArgs(model_path=str(tiny_model("wan2.2-t2v-a14b")), backend="diffusers"),
                            Platform.current())
    assert psnr(theirs.generate(SamplingParams(**request)).frames, ours) >= 40
    plain = theirs.generate(SamplingParams(**dict(request, boundary_ratio=None, flow_shift=None))).frames
    assert psnr(plain, ours) < 40  # both options changed the diffusers pipeline's output too
    assert theirs.pipe.config.boundary_ratio == 0.875  # put back after the call


def test_options_a_model_does_not_use_are_refused(native):
    pipe = native("wan2.1-t2v")
    for option, message in [({"boundary_ratio": 0.5}, "boundary_ratio applies to two-expert models"),
                            ({"guidance_scale_2": 2.0}, "guidance_scale_2 applies to two-expert models"),
                            ({"true_cfg_scale": 4.0}, "guidance scale is guidance_scale")]:
        with pytest.raises(InvalidRequestError, match=message):
            pipe.run(SamplingParams(**REQUEST, **option))
