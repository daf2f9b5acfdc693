"""From a request body to `SamplingParams`: the server's defaults (sampling flags given to
`sglang serve`), then what the request sets; sizes, steps, frames and prompts checked against
the server's limits and the model."""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path
from typing import Callable

from sglang_diffusion.config.families import GENERIC_VIDEO_FPS, Family
from sglang_diffusion.config.resolutions import resolution_size
from sglang_diffusion.config.sampling_params import SamplingParams
from sglang_diffusion.config.server_args import ServerArgs
from sglang_diffusion.errors import ConfigError
from sglang_diffusion.server.errors import APIError
from sglang_diffusion.server.schemas import SIZE_PATTERN, GenerationOptions, VideoCreateRequest

# Every family served here patchifies latents of an 8x-downsampling VAE in 2x2 tiles, so sizes
# that are multiples of 16 come out exactly as asked (others would be silently rounded).
SIZE_MULTIPLE = 16
_SIZE = re.compile(SIZE_PATTERN)
logger = logging.getLogger(__name__)
# Request fields that are SamplingParams fields of the same name and meaning
SAMPLING_OPTIONS = ("guidance_scale_2", "true_cfg_scale", "guidance_rescale", "flow_shift", "boundary_ratio",
                    "resolution", "orientation", "output_quality", "output_compression")


def token_counter(model_folder: Path) -> Callable[[str], int] | None:
    """Tokens of a prompt for the model's tokenizer that takes the most (the main text encoder's, not
    CLIP's 77), or None when the folder has no tokenizer that loads."""
    from transformers import AutoTokenizer

    best, reach = None, -1
    for folder in sorted(model_folder.glob("tokenizer*")):
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder)
        except Exception as e:  # a tokenizer this transformers cannot read: only the character bound applies
            logger.warning("prompt token bound: cannot load %s (%s: %s)", folder.name, type(e).__name__, e)
            continue
        if tokenizer.model_max_length > reach:
            best, reach = tokenizer, tokenizer.model_max_length
    if best is None:
        return None
    return lambda text: len(best(text, add_special_tokens=False, verbose=False)["input_ids"])


class ParamsBuilder:
    def __init__(self, args: ServerArgs, defaults: SamplingParams, family: Family | None, model_id: str,
                 count_tokens: Callable[[str], int] | None = None):
        self.args, self.defaults, self.family, self.model_id = args, defaults, family, model_id
        self.served_names = list(args.served_model_name) or [model_id]
        self.count_tokens = count_tokens

    def served_name(self, model: str | None) -> str:
        """The name answers echo: the one asked for if it is served, else the first served name
        (any name is accepted: this server has one model)."""
        return model if model in self.served_names else self.served_names[0]

    def check_prompt(self, text: str | None, param: str) -> None:
        if text is None:
            return
        if len(text) > self.args.max_prompt_chars:
            raise APIError(400, f"{param} is {len(text)} characters, over the server's limit of "
                           f"{self.args.max_prompt_chars} (max_prompt_chars)", param=param, code="prompt_too_long")
        tokens = self.count_tokens(text) if self.count_tokens is not None else 0
        if tokens > self.args.max_prompt_tokens:
            raise APIError(400, f"{param} is {tokens} tokens, over the server's limit of "
                           f"{self.args.max_prompt_tokens} (max_prompt_tokens)", param=param, code="prompt_too_long")

    def default(self, name: str):
        """A request field's value when the request leaves it out: the server's, else the family's."""
        value = getattr(self.defaults, name)
        if value is None and self.family is not None:
            value = self.family.defaults.get(name)
        return value

    def size(self, req: GenerationOptions) -> tuple[int | None, int | None]:
        width, height = req.width, req.height
        match = _SIZE.match(req.size or "")  # the schema's pattern: a mismatch was refused already
        if match and match[2]:
            if width is not None or height is not None:
                raise APIError(422, "give size or width/height, not both", param="size", code="invalid_size")
            width, height = int(match[2]), int(match[3])
        if req.resolution is not None:
            if width is not None or height is not None:
                raise APIError(422, "give resolution or size / width / height, not both", param="resolution",
                               code="invalid_size")
            height, width = resolution_size(req.resolution, req.orientation, self.family)
        for name, value in (("width", width), ("height", height)):
            if value is None:
                continue
            if not 1 <= value <= self.args.max_resolution:
                raise APIError(422, f"{name} {value}: this server makes sizes of 1 to {self.args.max_resolution} "
                               "pixels (max_resolution)", param="size", code="unsupported_size")
            if value % SIZE_MULTIPLE:
                raise APIError(422, f"{name} {value}: this model makes sizes that are multiples of "
                               f"{SIZE_MULTIPLE} pixels", param="size", code="unsupported_size")
        return width, height

    @staticmethod
    def check_options(req: GenerationOptions) -> None:
        """Combinations of schema-valid fields that do not go together: 422, naming them."""
        if req.orientation is not None and req.resolution is None:
            raise APIError(422, "orientation applies to a resolution shortcut: give resolution too",
                           param="orientation", code="invalid_value")
        if req.output_quality is not None and req.output_compression is not None:
            raise APIError(422, "give output_quality or output_compression, not both", param="output_compression",
                           code="invalid_value")
        if req.lora_strength is not None:
            names = req.lora_nickname
            count = 0 if names is None else 1 if isinstance(names, str) else len(names)
            if count == 0 or isinstance(req.lora_strength, list) and len(req.lora_strength) != count:
                raise APIError(422, f"lora_strength: give one value, or one per adapter of lora_nickname ({count}), "
                               f"got {req.lora_strength!r}", param="lora_strength", code="invalid_value")

    def sampling(self, req: GenerationOptions, **server_set) -> SamplingParams:
        """The request's parameters over the server's defaults; `server_set` are the fields the
        server itself decides (output handling, inputs)."""
        self.check_prompt(req.prompt, "prompt")
        self.check_prompt(req.negative_prompt, "negative_prompt")
        steps = req.num_inference_steps
        if steps is not None and steps > self.args.max_inference_steps:
            raise APIError(400, f"num_inference_steps {steps} is over the server's limit of "
                           f"{self.args.max_inference_steps}", param="num_inference_steps", code="invalid_value")
        width, height = self.size(req)
        self.check_options(req)
        given = dict(width=width, height=height, negative_prompt=req.negative_prompt, num_inference_steps=steps,
                     guidance_scale=req.guidance_scale, seed=req.seed, prompt=req.prompt,
                     enable_teacache=req.enable_teacache, teacache_thresh=req.teacache_thresh,
                     lora_adapters=req.lora_nickname, lora_strength=req.lora_strength,
                     **{name: getattr(req, name) for name in SAMPLING_OPTIONS})
        values = {k: v for k, v in given.items() if v is not None}
        if req.resolution is not None:  # the pipeline maps it to the model's own size (checked above)
            values.update(width=None, height=None)
        try:
            return dataclasses.replace(self.defaults, **values, **server_set)
        except ConfigError as e:
            raise APIError(400, str(e), code="invalid_value") from None

    def video_frames(self, req: VideoCreateRequest) -> tuple[int | None, int]:
        """(num_frames, fps): num_frames wins over seconds; neither: the server's default, else the
        family's (None when there is none: the model's own)."""
        fps = req.fps or self.default("fps") or GENERIC_VIDEO_FPS
        frames = req.num_frames
        if frames is None and req.seconds is not None:
            frames = max(1, round(req.seconds * fps))
        if frames is None:
            return self.default("num_frames"), fps
        if frames > self.args.max_num_frames:
            raise APIError(400, f"{frames} frames is over the server's limit of {self.args.max_num_frames} "
                           "(max_num_frames)", param="num_frames" if req.num_frames else "seconds",
                           code="invalid_value")
        return frames, fps
