"""The denoising loop: per step, pick the expert for the timestep, run the DiT on the conditioned
latents (with classifier-free guidance), and let the scheduler step.

Two-expert models (Wan2.2 A14B) run `experts[0]` for timesteps at or above `boundary_timestep`
(high noise) with `guidance_scale`, `experts[1]` below it with `guidance_scale_2`.

Each expert's cross-attention context (K/V of the prompt, negative prompt and image) is built
once per request, on the expert's first step.

Classifier-free guidance runs the conditional and unconditional branches either as one forward
of batch 2B ("batched") or as two forwards of batch B ("two_pass"). Which is faster depends on
the device and the shapes (on a 2-core CPU two passes measured faster, on a GPU the batch
usually wins), so with "auto" both are measured on the first steps of a shape and the faster one
is kept for that shape (`CfgLayout`).

Several ranks (`parallel`, the process groups): with sequence parallelism each rank runs the DiT
on its shard of the tokens (`SequenceShard`); the scheduler steps the latents elementwise, so each
rank's latents stay right at its own tokens, and they are gathered once, after the last step.
With CFG parallelism the two branches run on the two ranks of a CFG group and are combined once
per step.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch

from sglang_diffusion.distributed.parallel_state import ParallelGroups, all_gather, all_reduce_max
from sglang_diffusion.distributed.sharding import SequenceShard
from sglang_diffusion.pipelines.stages.base import GenerationState, Stage

logger = logging.getLogger(__name__)

CFG_LAYOUTS = ("auto", "batched", "two_pass")


class CfgLayout:
    """Per input shape: warm both layouts up, time each twice, keep the faster."""

    PLAN = ("two_pass", "batched", "two_pass", "batched", "two_pass", "batched")  # first two: warm-up
    WARMUP = 2

    def __init__(self, mode: str = "auto"):
        if mode not in CFG_LAYOUTS:
            raise ValueError(f"cfg layout must be one of {CFG_LAYOUTS}, got {mode!r}")
        self.mode = mode
        self.chosen: dict[tuple, str] = {}
        self._seen: dict[tuple, int] = {}
        self._seconds: dict[tuple, dict[str, float]] = {}

    def next(self, key: tuple) -> tuple[str, bool]:
        """(layout for this step, whether to time it)."""
        if self.mode != "auto":
            return self.mode, False
        if key in self.chosen:
            return self.chosen[key], False
        n = self._seen.get(key, 0)
        return self.PLAN[n], n >= self.WARMUP

    def record(self, key: tuple, layout: str, seconds: float | None) -> None:
        if self.mode != "auto" or key in self.chosen:
            return
        n = self._seen[key] = self._seen.get(key, 0) + 1
        if seconds is not None:
            totals = self._seconds.setdefault(key, {})
            totals[layout] = totals.get(layout, 0.0) + seconds
        if n == len(self.PLAN):
            totals = self._seconds.pop(key)
            self.chosen[key] = min(totals, key=totals.get)
            logger.info("classifier-free guidance: %s for input %s (measured: %s)", self.chosen[key], key[1:],
                        ", ".join(f"{k} {v / 2 * 1e3:.1f} ms/step" for k, v in sorted(totals.items())))


@dataclass
class _Contexts:
    cond: object
    uncond: object | None
    both: object | None = None


@dataclass
class DenoisingStage(Stage):
    experts: list  # WanTransformer3DModel-like: .encode_context(), forward(x, t, context=), .dtype
    scheduler: object
    boundary_timestep: float | None = None
    cfg: CfgLayout = field(default_factory=CfgLayout)
    parallel: ParallelGroups | None = None  # None: one rank

    name = "denoising"
    reads = ("params", "latents", "timesteps", "prompt_embeds", "conditioning")
    writes = ("latents",)

    def describe(self) -> str:
        experts = f"{len(self.experts)} experts split at t={self.boundary_timestep:g}" if len(self.experts) > 1 \
            else type(self.experts[0]).__name__
        cfg = "parallel" if self._cfg_ranks() > 1 else self.cfg.mode
        sp = f", sp {self.parallel.sp.size}" if self.parallel is not None and self.parallel.sp.size > 1 else ""
        return f"{self.name}({experts}, cfg {cfg}{sp})"

    def _cfg_ranks(self) -> int:
        return self.parallel.cfg.size if self.parallel is not None else 1

    def _expert(self, t: torch.Tensor, state: GenerationState) -> tuple[int, float]:
        p = state.params
        if self.boundary_timestep is None or t >= self.boundary_timestep:
            return 0, p.guidance_scale
        return 1, p.guidance_scale_2 if p.guidance_scale_2 is not None else p.guidance_scale

    def _contexts(self, model, state: GenerationState) -> _Contexts:
        # CFG parallel: rank 0 of the CFG group runs the conditional branch, rank 1 the other
        cfg_rank = self.parallel.cfg.rank if self._cfg_ranks() > 1 and state.do_cfg else 0
        cond = model.encode_context(state.prompt_embeds, state.image_embeds) if cfg_rank == 0 else None
        uncond = (model.encode_context(state.negative_prompt_embeds, state.image_embeds)
                  if state.do_cfg and (cfg_rank == 1 or self._cfg_ranks() == 1) else None)
        return _Contexts(cond, uncond)

    def _predict(self, model, x: torch.Tensor, t: torch.Tensor, ctx: _Contexts, scale: float,
                 do_cfg: bool, seq: SequenceShard | None) -> torch.Tensor:
        if not do_cfg:
            return _call(model, x, t, context=ctx.cond, seq=seq)
        if self._cfg_ranks() > 1:
            mine = _call(model, x, t, context=ctx.cond if ctx.cond is not None else ctx.uncond, seq=seq)
            cond, uncond = all_gather(mine, self.parallel.cfg)  # once per step
            return uncond + scale * (cond - uncond)
        key = (x.device.type, tuple(x.shape), tuple(t.shape))
        layout, timed = self.cfg.next(key)
        start = _now(x.device) if timed else None
        if layout == "batched":
            if ctx.both is None:
                ctx.both = type(ctx.cond).cat([ctx.cond, ctx.uncond])
            cond, uncond = _call(model, torch.cat([x, x]), torch.cat([t, t]), context=ctx.both, seq=seq).chunk(2)
        else:
            cond = _call(model, x, t, context=ctx.cond, seq=seq)
            uncond = _call(model, x, t, context=ctx.uncond, seq=seq)
        seconds = _now(x.device) - start if timed else None
        if seconds is not None and seq is not None:
            # SP ranks must all pick the same layout (they run its collectives together)
            seconds = all_reduce_max(seconds, self.parallel.sp)
        self.cfg.record(key, layout, seconds)
        return uncond + scale * (cond - uncond)

    def _sequence(self, latents: torch.Tensor) -> tuple[SequenceShard | None, tuple, tuple]:
        """This rank's shard of the DiT's tokens (None without SP), the token grid, the patch."""
        patch = tuple(self.experts[0].config.patch_size)
        grid = tuple(n // p for n, p in zip(latents.shape[2:], patch))
        if self.parallel is None or self.parallel.sp.size == 1:
            return None, grid, patch
        return SequenceShard(grid[0] * grid[1] * grid[2], self.parallel), grid, patch

    def __call__(self, state: GenerationState) -> None:
        latents, conditioning, timesteps = state.latents, state.conditioning, state.timesteps
        contexts: dict[int, _Contexts] = {}
        seq, grid, patch = self._sequence(latents)
        total = len(timesteps)
        for i, t in enumerate(timesteps):
            index, scale = self._expert(t, state)
            model = self.experts[index]
            if index not in contexts:
                contexts[index] = self._contexts(model, state)
            x = conditioning.model_input(latents).to(model.dtype)
            timestep = conditioning.timestep(t, latents.shape[0])
            noise_pred = self._predict(model, x, timestep, contexts[index], scale, state.do_cfg, seq)
            latents = self.scheduler.step(noise_pred, t, latents, return_dict=False)[0]
            state.hooks.after_step(i + 1, total)
        if seq is not None:
            latents = seq.gather_latents(latents, grid, patch)  # once, after the last step
        state.latents = conditioning.finalize(latents)


def _call(model, x: torch.Tensor, t: torch.Tensor, context, seq: SequenceShard | None) -> torch.Tensor:
    """The DiT's forward; `seq` only under sequence parallelism (a DiT without SP takes none)."""
    return model(x, t, context=context) if seq is None else model(x, t, context=context, seq=seq)


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
