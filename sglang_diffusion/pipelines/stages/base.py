"""What a native pipeline is made of: a `GenerationState` that stages read and write, `Stage`s that
declare which of its fields they read and write, and `StagedPipeline`, which runs a list of them.

A family's pipeline file builds its components and lists its stages; everything a request
flows through is in that list. Each stage is timed (the request's `timings`, by stage name).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import numpy as np
import torch

from sglang_diffusion.config.families import Family
from sglang_diffusion.config.sampling_params import SamplingParams
from sglang_diffusion.pipelines.base import PipelineOutput
from sglang_diffusion.pipelines.hooks import StepHooks

logger = logging.getLogger(__name__)


@dataclass
class GenerationState:
    """One request as it goes through the stages."""

    params: SamplingParams  # resolved: family defaults filled in, sizes corrected
    hooks: StepHooks
    device: torch.device
    generator: torch.Generator | None = None
    batch_size: int = 1  # videos per prompt
    do_cfg: bool = False
    prompt_embeds: torch.Tensor | None = None  # [B, L, C]
    negative_prompt_embeds: torch.Tensor | None = None
    pooled_prompt_embeds: torch.Tensor | None = None  # [B, C'] pooled text (FLUX.1's CLIP)
    negative_pooled_prompt_embeds: torch.Tensor | None = None
    image: Any = None  # the input image (PIL), or a list of them (Qwen-Image-Edit-Plus)
    # what the DiT's context takes of the image: [B, L', C'] CLIP tokens (Wan2.1 I2V), or a list
    # of reference latents [B, C, 1, h, w], one per input image (Qwen-Image-Edit)
    image_embeds: Any = None
    conditioning: Any = None  # a stages.conditioning object: how latents become the DiT's input
    latents: torch.Tensor | None = None  # [B, C, F', H', W'] fp32
    timesteps: torch.Tensor | None = None
    frames: np.ndarray | None = None  # uint8 [B, F, H, W, 3]
    timings: dict[str, float] = field(default_factory=dict)
    cache_stats: Any = None  # a cache.stats.CacheStats when step caching ran
    forward_outputs: int = 0  # outputs of the forward it ran in (more than its own when batched)


_STATE_FIELDS = {f.name for f in fields(GenerationState)}


class Stage:
    """A step of a pipeline. `reads` / `writes` name GenerationState fields; `check` verifies
    before the stage runs that what it reads has been written."""

    name: ClassVar[str]
    reads: ClassVar[tuple[str, ...]] = ()
    writes: ClassVar[tuple[str, ...]] = ()
    # The first stage that runs once for a batch of requests, on their stacked state (the
    # timesteps); it and every stage after it are per batch, the stages before it per request.
    per_batch: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        unknown = [f for f in (*cls.reads, *cls.writes) if f not in _STATE_FIELDS]
        assert not unknown, f"{cls.__name__} declares unknown state fields {unknown}"

    def __call__(self, state: GenerationState) -> None:
        raise NotImplementedError

    def describe(self) -> str:
        return self.name

    def batch_refusal(self) -> str | None:
        """Why requests cannot share this stage's forward (then each runs alone), or None."""
        return None


class StagedPipeline:
    """A native pipeline: components already loaded, a list of stages, the family's defaults."""

    backend = "sglang"

    def __init__(self, name: str, family: Family | None, stages: list[Stage], device: torch.device,
                 info: dict | None = None, lora=None):
        self.name, self.family, self.stages, self.device = name, family, stages, device
        self.info = dict(info or {})
        validation = next((s for s in stages if s.name == "input_validation"), None)
        if validation is not None:  # told to clients (/model_info): whether edits / image-to-video apply
            self.info.setdefault("image_input", validation.image != "none")
        self.lora = lora
        self._split = next((i for i, s in enumerate(stages) if s.per_batch), len(stages))
        logger.info("%s stages: %s", name, " -> ".join(s.describe() for s in stages))

    def describe(self) -> dict:
        return {"pipeline": self.name, "backend": self.backend, "family": self.family.name if self.family else None,
                "batch_refusal": self.batch_refusal(), "vae_dtype": self._vae_dtype(), **self.info}

    def _vae_dtype(self) -> str | None:
        """The dtype the decoding stage's VAE runs in (the DiT's is the builders' `dit_dtype`)."""
        vae = next((getattr(s, "vae", None) for s in self.stages if s.name == "decoding"), None)
        dtype = getattr(vae, "dtype", None)
        return str(dtype).removeprefix("torch.") if dtype is not None else None

    def batch_refusal(self) -> str | None:
        """Why requests of one batch key cannot share a forward here (they then run one at a time), or None."""
        return next(filter(None, (s.batch_refusal() for s in self.stages)), None)

    def _run_stages(self, state: GenerationState, stages: list[Stage]) -> None:
        for stage in stages:
            missing = [f for f in stage.reads if getattr(state, f) is None]
            assert not missing, f"stage {stage.name} reads {missing}, which no earlier stage wrote"
            if stage.name == "denoising":
                state.hooks.before_steps(state.params)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            start = time.perf_counter()
            stage(state)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            state.timings[stage.name] = state.timings.get(stage.name, 0.0) + time.perf_counter() - start

    def run(self, params: SamplingParams, hooks: StepHooks | None = None) -> GenerationState:
        """Every stage in order; the final state (latents and frames included)."""
        return self.run_batch([params], hooks)[0]

    def run_batch(self, requests: list[SamplingParams], hooks: StepHooks | None = None) -> list[GenerationState]:
        """Requests that share a forward (equal batch keys, `runtime.batching`): each through the
        per-request stages alone, then those whose states stack (`pipelines.batch`) through the
        per-batch stages together. One final state per request, its own rows of the latents and
        frames; outputs equal each request run alone up to float rounding."""
        from sglang_diffusion.pipelines import batch

        hooks = hooks or StepHooks()
        states = [GenerationState(params=params, hooks=hooks, device=self.device) for params in requests]
        with torch.inference_mode():
            for state in states:
                self._run_stages(state, self.stages[:self._split])
            for group in batch.stack_groups(states):
                merged = batch.stack(group)
                self._run_stages(merged, self.stages[self._split:])
                batch.unstack(merged, group)
                for state in group:
                    state.forward_outputs = merged.batch_size
        return states

    def generate(self, params: SamplingParams, hooks: StepHooks | None = None) -> PipelineOutput:
        return self.generate_batch([params], hooks)[0]

    def generate_batch(self, requests: list[SamplingParams], hooks: StepHooks | None = None) -> list[PipelineOutput]:
        """One output per request, in order (see `run_batch`)."""
        is_video = self.family.is_video if self.family else True
        return [PipelineOutput(frames=state.frames, is_video=is_video, params=state.params, timings=state.timings,
                               cache=state.cache_stats.describe() if state.cache_stats is not None else None,
                               batch_size=state.forward_outputs)
                for state in self.run_batch(requests, hooks)]
