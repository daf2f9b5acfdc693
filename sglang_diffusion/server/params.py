"""From a request body to `SamplingParams`: the server's defaults (sampling flags given to
`sglang serve`), then what the request sets; sizes, steps and frames checked against the
server's limits and the model."""

from __future__ import annotations

import dataclasses
import re

from sglang_diffusion.config.families import GENERIC_VIDEO_FPS, Family
from sglang_diffusion.config.sampling_params import SamplingParams
from sglang_diffusion.config.server_args import ServerArgs
from sglang_diffusion.errors import ConfigError
from sglang_diffusion.server.errors import APIError
from sglang_diffusion.server.schemas import GenerationOptions, VideoCreateRequest

# Every family served here patchifies latents of an 8x-downsampling VAE in 2x2 tiles, so sizes
# that are multiples of 16 come out exactly as asked (others would be silently rounded).
SIZE_MULTIPLE = 16
_SIZE = re.compile(r"^\s*(\d{1,6})\s*[xX]\s*(\d{1,6})\s*$")


class ParamsBuilder:
    def __init__(self, args: ServerArgs, defaults: SamplingParams, family: Family | None, model_id: str):
        self.args, self.defaults, self.family, self.model_id = args, defaults, family, model_id

    def check_model(self, model: str | None) -> None:
        if model is not None and model not in (self.model_id, self.model_id.rstrip("/").rsplit("/", 1)[-1]):
            raise APIError(404, f"model {model!r} is not served here; this server serves {self.model_id!r}",
                           param="model", code="model_not_found")

    def default(self, name: str):
        """A request field's value when the request leaves it out: the server's, else the family's."""
        value = getattr(self.defaults, name)
        if value is None and self.family is not None:
            value = self.family.defaults.get(name)
        return value

    def size(self, req: GenerationOptions) -> tuple[int | None, int | None]:
        width, height = req.width, req.height
        if req.size not in (None, "", "auto"):
            match = _SIZE.match(req.size)
            if not match:
                raise APIError(400, f'size must be "WIDTHxHEIGHT" in pixels (e.g. "1024x1024"), got {req.size!r}',
                               param="size", code="invalid_size")
            if width is not None or height is not None:
                raise APIError(400, "give size or width/height, not both", param="size", code="invalid_size")
            width, height = int(match[1]), int(match[2])
        for name, value in (("width", width), ("height", height)):
            if value is None:
                continue
            if not 1 <= value <= self.args.max_resolution:
                raise APIError(400, f"{name} {value} is out of range: 1 to {self.args.max_resolution} pixels "
                               "(max_resolution)", param="size", code="invalid_size")
            if value % SIZE_MULTIPLE:
                raise APIError(422, f"{name} {value}: this model makes sizes that are multiples of "
                               f"{SIZE_MULTIPLE} pixels", param="size", code="unsupported_size")
        return width, height

    def sampling(self, req: GenerationOptions, **server_set) -> SamplingParams:
        """The request's parameters over the server's defaults; `server_set` are the fields the
        server itself decides (output handling, inputs)."""
        self.check_model(req.model)
        steps = req.num_inference_steps
        if steps is not None and steps > self.args.max_inference_steps:
            raise APIError(400, f"num_inference_steps {steps} is over the server's limit of "
                           f"{self.args.max_inference_steps}", param="num_inference_steps", code="invalid_value")
        width, height = self.size(req)
        given = dict(width=width, height=height, negative_prompt=req.negative_prompt, num_inference_steps=steps,
                     guidance_scale=req.guidance_scale, seed=req.seed, prompt=req.prompt)
        values = {k: v for k, v in given.items() if v is not None}
        try:
            return dataclasses.replace(self.defaults, **values, **server_set)
        except ConfigError as e:
            raise APIError(400, str(e), code="invalid_value") from None

    def video_frames(self, req: VideoCreateRequest) -> tuple[int | None, int]:
        """(num_frames, fps): num_frames wins over seconds; None leaves it to the model."""
        fps = req.fps or self.default("fps") or GENERIC_VIDEO_FPS
        frames = req.num_frames
        if frames is None and req.seconds is not None:
            frames = max(1, round(req.seconds * fps))
        if frames is not None and frames > self.args.max_num_frames:
            raise APIError(400, f"{frames} frames is over the server's limit of {self.args.max_num_frames} "
                           "(max_num_frames)", param="num_frames" if req.num_frames else "seconds",
                           code="invalid_value")
        return frames, fps
