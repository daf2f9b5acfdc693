"""What a command will run with, said before the model loads: the effective size, frames and
steps for a local model folder (the values given over the model family's defaults), so that
nobody waits ten minutes on a default without knowing it."""

from __future__ import annotations

from pathlib import Path

from sglang_diffusion.config.families import detect_family
from sglang_diffusion.config.sampling_params import SamplingParams
from sglang_diffusion.errors import ModelLoadError
from sglang_diffusion.loader.resolve import read_model_index

_FLAGS = {"size": "--height/--width", "frames": "--num-frames", "steps": "--num-inference-steps"}


def effective_settings(model_path: str | None, sampling: SamplingParams) -> str | None:
    """"FluxPipeline (family flux.1): 1024x1024, 28 steps, guidance 3.5 (the model's defaults for
    size, steps: --height/--width, --num-inference-steps)"; None where the model is not a local
    diffusers folder (a Hugging Face id is resolved by the loader, which then says it)."""
    folder = Path(model_path).expanduser() if model_path else None
    if folder is None or not folder.is_dir():
        return None
    try:
        index = read_model_index(folder)
    except ModelLoadError:  # the loader reports it
        return None
    family = detect_family(index.class_name, index.extras, folder)
    p = sampling.resolve(family.defaults if family else {})
    video = family is None or family.is_video
    if p.resolution is not None:
        size = f"{p.resolution} ({p.orientation or 'default'} orientation)"
    else:
        size = f"{p.width}x{p.height}" if p.width and p.height else "the pipeline's default size"
    parts = [size]
    if video:
        parts.append(f"{p.num_frames} frames" if p.num_frames else "the pipeline's default frame count")
    parts.append(f"{p.num_inference_steps} steps" if p.num_inference_steps else "the pipeline's default steps")
    if p.guidance_scale is not None:
        parts.append(f"guidance {p.guidance_scale:g}")
    given = {"size": sampling.resolution is not None or (sampling.width is not None and sampling.height is not None),
             "frames": not video or sampling.num_frames is not None, "steps": sampling.num_inference_steps is not None}
    defaulted = [name for name, was_given in given.items() if not was_given]
    text = f"{index.class_name} (family {family.name if family else 'unknown'}): {', '.join(parts)}"
    if defaulted:
        text += (f" (the model's defaults for {', '.join(defaulted)}: set them with "
                 f"{', '.join(_FLAGS[name] for name in defaulted)})")
    return text
