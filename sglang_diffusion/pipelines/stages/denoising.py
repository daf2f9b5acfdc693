"""The denoising loop: per step, pick the expert for the timestep, run the DiT on the conditioned
latents (with classifier-free guidance), and let the scheduler step.

Two-expert models (Wan2.2 A14B) run `experts[0]` for timesteps at or above `boundary_timestep`
(high noise; a request's boundary_ratio moves it) with `guidance_scale`, `experts[1]` below it
with `guidance_scale_2`. `guidance_rescale` rescales the guided prediction (`rescale_noise_cfg`).

Each expert's cross-attention context (K/V of the prompt, negative prompt and image) is built
once per request, on the expert's first step.

Classifier-free guidance runs the conditional and unconditional branches through the DiT's
`forward_branches` (which shares the work that does not depend on the prompt), from the first
cross-attention on either as one batch of 2B ("batched") or as two passes of batch B ("two_pass"). Which is faster depends on
the device and the shapes (on a 2-core CPU two passes measured faster, on a GPU the batch
usually wins), so with "auto" both are measured before the first step of a shape and the faster
one is kept for that shape (`CfgLayout`).

Several ranks (`parallel`, the process groups): with sequence parallelism each rank runs the DiT
on its shard of the tokens (`SequenceShard`); the scheduler steps the latents elementwise, so each
rank's latents stay right at its own tokens, and they are gathered once, after the last step.
With CFG parallelism the two branches run on the two ranks of a CFG group and are combined once
per step.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sglang_diffusion.cache import Caching
from sglang_diffusion.distributed.parallel_state import ParallelGroups, all_gather, all_reduce_max
from sglang_diffusion.distributed.sharding import SequenceShard
from sglang_diffusion.errors import InvalidRequestError
from sglang_diffusion.pipelines.stages.base import GenerationState, Stage

logger = logging.getLogger(__name__)

CFG_LAYOUTS = ("auto", "batched", "two_pass")


class CfgLayout:
    """Which classifier-free-guidance layout runs, per device and input shapes.

    With "auto" the choice is made before the first step of the first request of a shape: both
    layouts run the DiT cut to its first block (`probe`), once to warm up and twice timed, and
    the faster is kept, in memory and in `cfg_layout.json` under `cache_dir`. Deciding before
    any step, and keeping the decision, means every request of a shape runs one layout: the same
    seed gives the same output bit for bit (the layouts agree only to float rounding)."""

    CACHE_FILE = "cfg_layout.json"

    def __init__(self, mode: str = "auto", cache_dir: Path | str | None = None):
        if mode not in CFG_LAYOUTS:
            raise ValueError(f"cfg layout must be one of {CFG_LAYOUTS}, got {mode!r}")
        self.mode = mode
        self.cache = Path(cache_dir or Path.home() / ".cache" / "sglang_diffusion") / self.CACHE_FILE
        self.chosen: dict[str, str] = {}

    def choose(self, key: str, probe: Callable[[str], float]) -> str:
        """The layout for `key`; `probe(layout)` runs one cut-down step in it and returns seconds."""
        if self.mode != "auto":
            return self.mode
        if key in self.chosen:
            return self.chosen[key]
        entry = self._read().get(key)
        if isinstance(entry, dict) and entry.get("layout") in ("batched", "two_pass"):
            self.chosen[key] = entry["layout"]
            logger.info("classifier-free guidance: %s for %s (measured earlier, cached in %s)", entry["layout"], key,
                        self.cache)
            return entry["layout"]
        for layout in ("two_pass", "batched"):
            probe(layout)  # warm-up: first-call costs
        seconds = {"two_pass": 0.0, "batched": 0.0}
        for _ in range(2):
            for layout in seconds:
                seconds[layout] += probe(layout) / 2
        self.chosen[key] = min(seconds, key=seconds.get)
        self._write(key, {"layout": self.chosen[key], "probe_ms": {k: round(v * 1e3, 3) for k, v in seconds.items()}})
        logger.info("classifier-free guidance: %s for %s (first DiT block: %s)", self.chosen[key], key,
                    ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in seconds.items()))
        return self.chosen[key]

    def _read(self) -> dict:
        try:
            data = json.loads(self.cache.read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def _write(self, key: str, entry: dict) -> None:
        try:
            self.cache.parent.mkdir(parents=True, exist_ok=True)
            data = {**self._read(), key: entry}
            tmp = self.cache.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
            tmp.replace(self.cache)  # atomic: concurrent processes never see half a file
        except OSError as e:
            logger.warning("cannot write %s (%s): the CFG layout choice holds for this process only", self.cache, e)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    return f"{model} x{torch.get_num_threads()} threads"


@dataclass
class _Contexts:
    cond: object
    uncond: object | None
    both: object | None = None


@dataclass
class DenoisingStage(Stage):
    experts: list  # WanTransformer3DModel-like: .encode_context(), forward(x, t, context=), .forward_branches(), .dtype
    scheduler: object
    boundary_timestep: float | None = None
    cfg: CfgLayout = field(default_factory=CfgLayout)
    parallel: ParallelGroups | None = None  # None: one rank
    # The SamplingParams field that scales CFG (FLUX.1: true_cfg_scale; its guidance_scale is embedded).
    cfg_scale: str = "guidance_scale"
    caching: Caching = field(default_factory=Caching)  # step caching (sglang_diffusion.cache), set by the registry
    # (cond, uncond, scale) -> prediction; None: uncond + scale * (cond - uncond). A family's own
    # rule (Qwen-Image rescales the result to the conditional prediction's norm) goes here.
    guidance: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor] | None = None
    # The latent elements per DiT token, (frames, rows, columns), which sequence parallelism
    # splits the latents by; None: the DiT config's patch_size (FLUX packs 2x2 itself: (1, 2, 2)).
    patch: tuple[int, int, int] | None = None

    name = "denoising"
    reads = ("params", "latents", "timesteps", "prompt_embeds", "conditioning")
    writes = ("latents",)

    def describe(self) -> str:
        experts = f"{len(self.experts)} experts split at t={self.boundary_timestep:g}" if len(self.experts) > 1 \
            else type(self.experts[0]).__name__
        cfg = "parallel" if self._cfg_ranks() > 1 else self.cfg.mode
        sp = f", sp {self.parallel.sp.size}" if self.parallel is not None and self.parallel.sp.size > 1 else ""
        cache = f", cache {self.caching.describe()}" if self.caching.cache_dit is not None else ""
        return f"{self.name}({experts}, cfg {cfg}{sp}{cache})"

    def batch_refusal(self) -> str | None:
        if self.caching.cache_dit is not None:
            return "Cache-DiT decides which blocks to skip on a whole batch's residuals"
        return None

    def _cfg_ranks(self) -> int:
        return self.parallel.cfg.size if self.parallel is not None else 1

    def boundary(self, state: GenerationState) -> float | None:
        """The timestep where a two-expert model switches: the request's boundary_ratio of the
        training timesteps, else the model's (None: one expert)."""
        ratio = state.params.boundary_ratio
        if self.boundary_timestep is None or ratio is None:
            return self.boundary_timestep
        return ratio * self.scheduler.config.num_train_timesteps

    def _expert(self, t: torch.Tensor, state: GenerationState, boundary: float | None) -> tuple[int, float]:
        p = state.params
        if boundary is None or t >= boundary:
            return 0, getattr(p, self.cfg_scale)
        return 1, p.guidance_scale_2 if p.guidance_scale_2 is not None else p.guidance_scale

    def _contexts(self, model, state: GenerationState) -> _Contexts:
        # CFG parallel: rank 0 of the CFG group runs the conditional branch, rank 1 the other
        cfg_rank = self.parallel.cfg.rank if self._cfg_ranks() > 1 and state.do_cfg else 0
        conditioning = state.conditioning  # it knows what the family's DiT context is made of
        cond = conditioning.context(model, state, negative=False) if cfg_rank == 0 else None
        uncond = (conditioning.context(model, state, negative=True)
                  if state.do_cfg and (cfg_rank == 1 or self._cfg_ranks() == 1) else None)
        return _Contexts(cond, uncond)

    def _predict(self, model, x: torch.Tensor, t: torch.Tensor, ctx: _Contexts, scale: float,
                 do_cfg: bool, seq: SequenceShard | None, runners=None, rescale: float = 0.0) -> torch.Tensor:
        """`runners(branch)`: this step's block runner of a guidance branch (step caching), or None.
        `rescale`: the request's guidance_rescale."""
        if not do_cfg:
            return _call(model, x, t, context=ctx.cond, seq=seq, runner=runners and runners("cond"))
        if self._cfg_ranks() > 1:
            branch = "cond" if ctx.cond is not None else "uncond"
            mine = _call(model, x, t, context=ctx.cond if branch == "cond" else ctx.uncond, seq=seq,
                         runner=runners and runners(branch))
            cond, uncond = all_gather(mine, self.parallel.cfg)  # once per step
            return self._guide(cond, uncond, scale, rescale)
        layout = self.cfg.choose(self._layout_key(model, x, t),
                                 lambda layout: self._probe(model, x, t, ctx, layout, seq))
        if runners is not None:
            runners = [runners("joined")] if layout == "batched" else [runners("cond"), runners("uncond")]
        cond, uncond = self._branches(model, x, t, ctx, layout, seq, runners=runners)
        return self._guide(cond, uncond, scale, rescale)

    def _guide(self, cond: torch.Tensor, uncond: torch.Tensor, scale: float, rescale: float) -> torch.Tensor:
        guided = self.guidance(cond, uncond, scale) if self.guidance is not None else uncond + scale * (cond - uncond)
        return rescale_noise_cfg(guided, cond, rescale) if rescale else guided

    @staticmethod
    def _branches(model, x, t, ctx: _Contexts, layout: str, seq, runners=None, **kwargs) -> list[torch.Tensor]:
        """The conditional and unconditional predictions, in `layout`."""
        if layout == "batched" and ctx.both is None:
            ctx.both = type(ctx.cond).cat([ctx.cond, ctx.uncond])
        if seq is not None:
            kwargs["seq"] = seq
        if runners is not None:
            kwargs["runners"] = runners
        return model.forward_branches(x, t, [ctx.cond, ctx.uncond], joined=ctx.both if layout == "batched" else None,
                                      **kwargs)

    def _probe(self, model, x, t, ctx: _Contexts, layout: str, seq) -> float:
        """Seconds of one guidance step in `layout` with the DiT cut to its first block."""
        start = _now(x.device)
        self._branches(model, x, t, ctx, layout, seq, num_blocks=1)
        seconds = _now(x.device) - start
        if seq is not None:  # SP ranks must all pick the same layout (they run its collectives together)
            seconds = all_reduce_max(seconds, self.parallel.sp)
        return seconds

    @staticmethod
    def _layout_key(model, x: torch.Tensor, t: torch.Tensor) -> str:
        c = model.config
        return (f"{device_name(x.device)}|{str(x.dtype).removeprefix('torch.')}|{type(model).__name__} "
                f"{c.num_attention_heads}x{c.attention_head_dim} ffn {c.ffn_dim}|x {list(x.shape)}|t {list(t.shape)}|"
                f"torch {torch.__version__}")

    def _sequence(self, latents: torch.Tensor, ctx: _Contexts) -> tuple[SequenceShard | None, tuple, tuple]:
        """This rank's shard of the DiT's tokens (the latents' grid, then the reference tokens the
        context appends, image editing), the token grid, the patch (None, (), () without SP)."""
        if self.parallel is None or self.parallel.sp.size == 1:
            return None, (), ()
        patch = self.patch or tuple(self.experts[0].config.patch_size)
        grid = tuple(n // p for n, p in zip(latents.shape[2:], patch))
        context = ctx.cond if ctx.cond is not None else ctx.uncond
        return SequenceShard(grid[0] * grid[1] * grid[2] + context.reference_tokens, self.parallel), grid, patch

    def __call__(self, state: GenerationState) -> None:
        latents, conditioning, timesteps = state.latents, state.conditioning, state.timesteps
        total = len(timesteps)
        boundary = self.boundary(state)
        plan = [self._expert(t, state, boundary) for t in timesteps]
        first = plan[0][0] if plan else 0
        contexts: dict[int, _Contexts] = {first: self._contexts(self.experts[first], state)}
        seq, grid, patch = self._sequence(latents, contexts[first])
        rescale = state.params.guidance_rescale or 0.0
        if rescale and seq is not None:
            raise InvalidRequestError("guidance_rescale needs the whole prediction's standard deviation; it does not "
                                      "run under sequence parallelism (sp_degree > 1)")
        cache = self.caching.start(state.params, self.experts, [sum(e == i for e, _ in plan)
                                                                 for i in range(len(self.experts))],
                                   shard=seq)
        for i, t in enumerate(timesteps):
            index, scale = plan[i]
            model = self.experts[index]
            if index not in contexts:
                contexts[index] = self._contexts(model, state)
            x = conditioning.model_input(latents).to(model.dtype)
            timestep = conditioning.timestep(t, latents.shape[0])
            noise_pred = self._predict(model, x, timestep, contexts[index], scale, state.do_cfg, seq,
                                       cache.step(index) if cache is not None else None, rescale=rescale)
            latents = self.scheduler.step(noise_pred, t, latents, return_dict=False)[0]
            state.hooks.after_step(i + 1, total)
        if seq is not None:
            latents = seq.gather_latents(latents, grid, patch)  # once, after the last step
        state.latents = conditioning.finalize(latents)
        if cache is not None:
            state.cache_stats = cache.stats


def rescale_noise_cfg(guided: torch.Tensor, cond: torch.Tensor, rescale: float) -> torch.Tensor:
    """guidance_rescale (Lin et al., "Common Diffusion Noise Schedules and Sample Steps are
    Flawed", section 3.4, as diffusers' rescale_noise_cfg): the guided prediction scaled to the
    standard deviation of the conditional one, per batch element, mixed back in by `rescale`."""
    dims = list(range(1, guided.ndim))
    rescaled = guided * (cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
    return rescale * rescaled + (1 - rescale) * guided


def _call(model, x: torch.Tensor, t: torch.Tensor, context, seq: SequenceShard | None, runner=None) -> torch.Tensor:
    """The DiT's forward; `seq` only under sequence parallelism (a DiT without SP takes none),
    `runner` only with step caching."""
    kwargs = {k: v for k, v in (("seq", seq), ("runner", runner)) if v is not None}
    return model(x, t, context=context, **kwargs)


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
