"""What every pipeline, native or diffusers, gives the runtime."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from sglang_diffusion.config.families import Family
from sglang_diffusion.config.sampling_params import SamplingParams
from sglang_diffusion.pipelines.hooks import StepHooks


@dataclass
class PipelineOutput:
    frames: np.ndarray  # uint8 [N, F, H, W, 3]: N outputs of F frames (F == 1 for an image)
    is_video: bool
    params: SamplingParams  # the resolved parameters the outputs were made with
    timings: dict[str, float] = field(default_factory=dict)  # stage -> seconds
    cache: str | None = None  # what step caching did: block-steps computed and skipped
    batch_size: int = 1  # outputs of the forward that made these (more than N when batched with others)


class Pipeline(Protocol):
    family: Family | None

    def generate(self, params: SamplingParams, hooks: StepHooks | None = None) -> PipelineOutput: ...

    def generate_batch(self, requests: list[SamplingParams], hooks: StepHooks | None = None) -> list[PipelineOutput]:
        """Requests of one batch key (`runtime.batching`), one output each, in order."""

    def describe(self) -> dict: ...
