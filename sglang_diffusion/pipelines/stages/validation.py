"""Input validation: the request's parameters resolved against the family's defaults, sizes and
frame counts the model cannot take corrected (as diffusers corrects them, with a warning), the
input image loaded or refused, and the random generator seeded."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch

from sglang_diffusion.config.families import Family
from sglang_diffusion.config.resolutions import apply_resolution
from sglang_diffusion.errors import InvalidRequestError
from sglang_diffusion.pipelines.stages.base import GenerationState, Stage

logger = logging.getLogger(__name__)


def load_image(path: str | list[str]):
    """A PIL RGB image; several paths (FLUX.2 editing with reference images) -> a list of them."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(path, list):
        return [load_image(p) for p in path]
    try:
        with Image.open(Path(path).expanduser()) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise InvalidRequestError(f"image_path: {path!r} does not exist") from None
    except (UnidentifiedImageError, OSError) as e:
        raise InvalidRequestError(f"image_path: {path!r} is not a readable image ({e})") from None


class InputValidationStage(Stage):
    """`image`: "required" (I2V), "optional" (TI2V) or "none" (T2V). `temporal_stride` /
    `spatial_multiple`: frame counts must be k * stride + 1, sizes multiples of the VAE's
    compression times the DiT's patch. `true_cfg`: guidance runs only when a negative prompt
    is given (FLUX.1's and Qwen-Image's true CFG, as diffusers runs it). `cfg_scale`: the
    SamplingParams field that scales classifier-free guidance (FLUX.1: true_cfg_scale, its
    guidance_scale being the distilled guidance embedding). Image families (task t2i) make one
    frame and refuse num_frames > 1. `size_from_image(image) -> (height, width)`: the output
    size when the request gives none (image edits keep the input's aspect ratio). `required`:
    the sampling fields besides the sizes and steps that need a value (Qwen-Image's
    guidance_scale is not used: its CFG is true_cfg_scale)."""

    name = "input_validation"
    writes = ("params", "generator", "batch_size", "do_cfg")

    def __init__(self, family: Family | None, *, temporal_stride: int, spatial_multiple: tuple[int, int],
                 image: str = "none", has_second_expert: bool = False, true_cfg: bool = False,
                 cfg_scale: str = "guidance_scale", size_from_image=None,
                 required: tuple[str, ...] = ("guidance_scale",)):
        assert image in ("required", "optional", "none")
        self.family, self.temporal_stride, self.spatial_multiple = family, temporal_stride, spatial_multiple
        self.image, self.has_second_expert, self.true_cfg = image, has_second_expert, true_cfg
        self.cfg_scale, self.size_from_image, self.required = cfg_scale, size_from_image, required
        self.defaults = dict(family.defaults) if family else {}

    def describe(self) -> str:
        return f"{self.name}(image {self.image})"

    def __call__(self, state: GenerationState) -> None:
        p = apply_resolution(state.params, self.family, self.spatial_multiple).resolve(self.defaults)
        if self.family is not None and not self.family.is_video:
            if p.num_frames not in (None, 1):
                raise InvalidRequestError(f"num_frames {p.num_frames}: this image model makes one image per output")
            p = dataclasses.replace(p, num_frames=1)
        if p.image_path is not None and self.image == "none":
            raise InvalidRequestError("image_path: this text-to-video / text-to-image model takes no input image")
        if p.image_path is None and self.image == "required":
            raise InvalidRequestError("this model needs an input image: pass image_path")
        image = load_image(p.image_path) if p.image_path is not None else None
        if self.size_from_image is not None and image is not None and (p.height is None or p.width is None):
            height, width = self.size_from_image(image)  # image edits: the input's aspect ratio
            p = dataclasses.replace(p, height=p.height or height, width=p.width or width)
        missing = [k for k in ("height", "width", "num_frames", "num_inference_steps", *self.required)
                   if getattr(p, k) is None]
        if missing:
            raise InvalidRequestError(f"{', '.join(missing)}: no value given and the model has no default")
        if not p.prompt:
            raise InvalidRequestError("prompt is required")
        for name in ("guidance_scale_2", "boundary_ratio"):
            if getattr(p, name) is not None and not self.has_second_expert:
                raise InvalidRequestError(f"{name} applies to two-expert models (Wan2.2 A14B); this model has one")
        if p.true_cfg_scale is not None and self.cfg_scale != "true_cfg_scale":
            raise InvalidRequestError(f"true_cfg_scale: this model's classifier-free guidance scale is "
                                      f"{self.cfg_scale}")
        if p.diffusers_kwargs:
            raise InvalidRequestError("diffusers_kwargs: only the diffusers backend takes them (--backend diffusers)")
        state.params = dataclasses.replace(p, **self._corrected(p))
        state.image = image
        state.batch_size = p.num_outputs_per_prompt
        scale = getattr(p, self.cfg_scale) or 1.0
        state.do_cfg = scale > 1.0 and (not self.true_cfg or p.negative_prompt is not None)
        if self.true_cfg and scale > 1.0 and p.negative_prompt is None:
            logger.info("%s %g without a negative prompt: true CFG off (as diffusers)", self.cfg_scale, scale)
        state.generator = torch.Generator("cpu").manual_seed(p.seed)

    def _corrected(self, p) -> dict:
        out = {}
        stride = self.temporal_stride
        if p.num_frames % stride != 1 % stride:
            frames = max(p.num_frames // stride * stride + 1, 1)
            logger.warning("num_frames %d: this model makes %d k + 1 frames; using %d", p.num_frames, stride, frames)
            out["num_frames"] = frames
        mh, mw = self.spatial_multiple
        height, width = p.height // mh * mh, p.width // mw * mw
        if (height, width) != (p.height, p.width):
            if height == 0 or width == 0:
                raise InvalidRequestError(f"height and width must be at least {mh} and {mw} for this model, "
                                          f"got {p.height} and {p.width}")
            logger.warning("height x width %d x %d: this model takes multiples of (%d, %d); using %d x %d",
                           p.height, p.width, mh, mw, height, width)
            out.update(height=height, width=width)
        return out
