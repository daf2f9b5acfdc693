"""`SamplingParams`: what one generation asks for.

`None` means "not given": the model family's default applies, then the pipeline's own.
`resolve()` fills those in without touching what the user set.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from sglang_diffusion.config.fields import option
from sglang_diffusion.config.resolutions import ORIENTATIONS, RESOLUTIONS
from sglang_diffusion.errors import ConfigError


@dataclass
class SamplingParams:
    prompt: str | list[str] | None = option(
        None, "Text description of the image or video to generate; several (`--prompt a b`, or a list) make one "
        "request each.")
    prompt_path: str | None = option(None, "A text file of prompts, one per line (after any --prompt).",
                                     metavar="FILE")
    negative_prompt: str | None = option(None, "What to steer the generation away from.")
    image_path: str | list[str] | None = option(
        None, "Input image for image-to-video and image edits; repeat the flag (or give a list) for models that "
        "take several (Qwen-Image-Edit-Plus).", metavar="PATH")
    num_inference_steps: int | None = option(None, "Number of denoising steps (default: the model's).")
    guidance_scale: float | None = option(None, "Classifier-free guidance scale (default: the model's).")
    guidance_scale_2: float | None = option(None, "Guidance scale of the low-noise expert (Wan2.2 A14B).")
    true_cfg_scale: float | None = option(None, "Classifier-free guidance scale, with a negative prompt, of "
                                          "guidance-distilled models whose guidance_scale is an embedding "
                                          "(FLUX.1); unset or 1: off.")
    seed: int | list[int] = option(1024, "Random seed; the same seed gives the same output. Several "
                                   "(`--seed 1 2`) make one request per prompt and seed.")
    height: int | None = option(None, "Height of the output in pixels (default: the model's).")
    width: int | None = option(None, "Width of the output in pixels (default: the model's).")
    num_frames: int | None = option(None, "Number of frames of a video (default: the model's).")
    fps: int | None = option(None, "Frames per second of a saved video (default: the model's, else 24).")
    num_outputs_per_prompt: int = option(1, "Images or videos per prompt and seed.")
    output_path: str = option("outputs/", "Directory the outputs are saved in.", metavar="DIR")
    output_file_name: str | None = option(
        None, "File name of the output (extension picks the format: .png/.jpg/.webp, .mp4); "
        "default: made from the prompt and seed.", metavar="NAME")
    save_output: bool = option(True, "Save the image or video to disk.")
    return_frames: bool = option(False, "Return the frames (uint8 [F, H, W, 3]) from the Python API.")
    enable_teacache: bool = option(False, "TeaCache for this request: skip every DiT block on steps whose "
                                   "timestep embedding barely changed (native pipelines).")
    teacache_thresh: float | None = option(None, "TeaCache's threshold on the accumulated rescaled change "
                                           "(default: the model's calibrated one; higher is faster).")
    # Sampling options (issue 19)
    guidance_rescale: float | None = option(
        None, "Rescale the guided prediction toward the standard deviation of the conditional one, 0 (off) to 1 "
        "(diffusers' rescale_noise_cfg; against over-exposure at high guidance).")
    flow_shift: float | None = option(
        None, "Shift of the flow-matching noise schedule, sigma -> shift * sigma / (1 + (shift - 1) * sigma): "
        "larger spends more steps at high noise (default: the model's scheduler, by image size where it shifts "
        "dynamically).")
    boundary_ratio: float | None = option(
        None, "Two-expert models (Wan2.2 A14B): the high-noise expert runs the timesteps at or above "
        "boundary_ratio x the training timesteps, the low-noise one the rest (default: model_index.json's).")
    resolution: str | None = option(
        None, "Output size by name, the short side in pixels (16:9, or the model's own size for it; also "
        "--480p, --720p, ...); instead of height and width.", choices=RESOLUTIONS, choice_flags=True)
    orientation: str | None = option(
        None, "Orientation of a resolution shortcut (default: the model's default size's).", choices=ORIENTATIONS)
    output_quality: int | None = option(
        None, "Quality of JPEG / WebP images and MP4 videos, 1-100 (MP4: x264 CRF 51 down to 0); default: "
        "JPEG 75, WebP 80, MP4 CRF 18. PNG is lossless.")
    output_compression: int | None = option(
        None, "Compression, 0-100 (OpenAI's name): JPEG / WebP / MP4 at quality 100 - compression, PNG at zlib "
        "level compression x 9 / 100; instead of output_quality.")
    perf_dump_path: str | None = option(
        None, "Write each request's per-stage and per-denoising-step timings as JSON to this file, or into "
        "this directory (one file per request).", metavar="PATH")
    profile: bool = option(False, "Record a torch profiler trace (Chrome trace JSON, beside the output) of "
                           "num_profiled_timesteps denoising steps, after the first.")
    num_profiled_timesteps: int = option(2, "Denoising steps the --profile trace records.")
    lora_adapters: str | list[str] | None = option(
        None, "LoRA adapters for this request, by the nicknames they were loaded under (the server's set_lora); "
        "default: the adapters set on the engine.", metavar="NICKNAME")
    lora_strength: float | list[float] | None = option(
        None, "Strength of each of lora_adapters (one for all, or one each; default 1).")
    diffusers_kwargs: dict = option(None, "Extra keyword arguments for a diffusers pipeline call "
                                    "(diffusers backend).", default_factory=dict, metavar="JSON")

    def __post_init__(self):
        validate_sampling_params(self)

    def explicit(self) -> dict:
        """The fields that differ from their defaults: what the user actually set."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if getattr(self, f.name) != _default(f)}

    def resolve(self, family_defaults: dict) -> "SamplingParams":
        """A copy with every unset field taken from the family's defaults."""
        unset = {k: v for k, v in family_defaults.items() if getattr(self, k) is None}
        return dataclasses.replace(self, **unset)


def _default(f: dataclasses.Field):
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def validate_sampling_params(p: SamplingParams) -> None:
    for name in ("num_inference_steps", "height", "width", "num_frames", "fps", "num_outputs_per_prompt"):
        value = getattr(p, name)
        if value is not None and value < 1:
            raise ConfigError(f"{name} must be at least 1, got {value}")
    if p.lora_strength is not None:
        count = 0 if p.lora_adapters is None else 1 if isinstance(p.lora_adapters, str) else len(p.lora_adapters)
        if isinstance(p.lora_strength, list) and len(p.lora_strength) != count or count == 0:
            raise ConfigError(f"lora_strength: give one value, or one per adapter of lora_adapters ({count}), "
                              f"got {p.lora_strength!r}")
    if isinstance(p.prompt, list) and (not p.prompt or not all(isinstance(t, str) and t.strip() for t in p.prompt)):
        raise ConfigError(f"prompt: a list of prompts must hold at least one and no empty one, got {p.prompt!r}")
    if isinstance(p.seed, list) and not p.seed:
        raise ConfigError("seed: a list of seeds must hold at least one")
    if p.teacache_thresh is not None and p.teacache_thresh < 0:
        raise ConfigError(f"teacache_thresh must not be negative, got {p.teacache_thresh}")
    _validate_sampling_options(p)
    for name in ("guidance_scale", "true_cfg_scale", "guidance_scale_2"):
        if getattr(p, name) is not None and getattr(p, name) < 0:
            raise ConfigError(f"{name} must not be negative, got {getattr(p, name)}")
    if p.output_file_name is not None:
        name = p.output_file_name
        if not name.strip() or "/" in name or "\\" in name or ".." in name or name == ".":
            raise ConfigError(f"output_file_name must be a plain file name (no path separators or '..'), "
                              f"got {name!r}")


def _in_range(p: SamplingParams, name: str, low: float, high: float, *, open_low: bool = False) -> None:
    value = getattr(p, name)
    if value is not None and not (low < value <= high if open_low else low <= value <= high):
        raise ConfigError(f"{name} must be {'over' if open_low else 'at least'} {low:g} and at most {high:g}, "
                          f"got {value}")


def _validate_sampling_options(p: SamplingParams) -> None:
    _in_range(p, "guidance_rescale", 0.0, 1.0)
    _in_range(p, "flow_shift", 0.0, 1000.0, open_low=True)
    _in_range(p, "boundary_ratio", 0.0, 1.0)
    _in_range(p, "output_quality", 1, 100)
    _in_range(p, "output_compression", 0, 100)
    _in_range(p, "num_profiled_timesteps", 1, 10000)
    if p.output_quality is not None and p.output_compression is not None:
        raise ConfigError("give output_quality or output_compression, not both")
    if p.resolution is not None and (p.height is not None or p.width is not None):
        raise ConfigError(f"give resolution ({p.resolution}) or height / width, not both")
    if p.orientation is not None and p.resolution is None:
        raise ConfigError("orientation applies to a resolution shortcut (resolution, --720p, ...); none was given")


def sampling_param_names() -> list[str]:
    return [f.name for f in dataclasses.fields(SamplingParams)]
