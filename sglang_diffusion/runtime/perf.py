"""--perf-dump-path and --profile of a request, on rank 0: the seconds of each denoising step,
taken through the pipeline's step hooks (native and diffusers pipelines alike), written as JSON
with the per-stage timings, and a torch profiler trace (Chrome trace JSON) of
num_profiled_timesteps denoising steps.

The trace leaves out the first step, which pays one-time costs (CFG layout choice, context K/V,
compilation), unless the request has only one. On a GPU each step end is synchronised with the
device, so that a step's time is its own; the same synchronisation marks the trace's bounds.
"""

from __future__ import annotations

import datetime
import json
import logging
import time
from pathlib import Path

import torch

from sglang_diffusion.config.sampling_params import SamplingParams
from sglang_diffusion.errors import ConfigError
from sglang_diffusion.pipelines.hooks import StepHooks
from sglang_diffusion.runtime.result import GenerationResult
from sglang_diffusion.storage.local import default_stem

logger = logging.getLogger(__name__)

PERF_SUFFIX, TRACE_SUFFIX = ".perf.json", ".trace.json"


class RequestPerf:
    def __init__(self, params: SamplingParams, device: torch.device):
        self.params, self.device = params, device
        self.steps_start: float | None = None
        self.step_ends: list[float] = []
        self.profiler = None
        self.profiled: list[int] = []  # the steps the trace holds
        self.trace: Path | None = None
        self._first_profiled = 2

    @classmethod
    def start(cls, params: SamplingParams, device: torch.device) -> "RequestPerf | None":
        """A recorder when the request asks for a perf dump or a profile, else None."""
        return cls(params, device) if params.perf_dump_path or params.profile else None

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def watch(self, hooks: StepHooks) -> StepHooks:
        """`hooks` with the step times (and the profiler's start and stop) taken around them."""

        def on_start(p: SamplingParams) -> None:
            self.params = p  # resolved: the family's defaults filled in
            self._first_profiled = 1 if (p.num_inference_steps or 0) <= 1 else 2
            if p.profile and self._first_profiled == 1:
                self._start_profiler()
            hooks.before_steps(p)
            self.steps_start = self._now()

        def on_progress(done: int, total: int) -> None:
            self.step_ends.append(self._now())
            if self.profiler is not None:
                self.profiled.append(done)
                if len(self.profiled) == self.params.num_profiled_timesteps:
                    self.stop()
            elif self.params.profile and done == self._first_profiled - 1 and not self.profiled:
                self._start_profiler()
            if hooks.on_progress is not None:
                hooks.on_progress(done, total)

        return StepHooks(on_progress=on_progress, is_cancelled=hooks.is_cancelled, on_start=on_start)

    def _start_profiler(self) -> None:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device.type == "cuda" else [])
        self.profiler = profile(activities=activities, record_shapes=True)
        self.profiler.__enter__()

    def stop(self) -> None:
        """End the trace (at its last step, or when the request ends or fails first) and write it."""
        if self.profiler is None:
            return
        profiler, self.profiler = self.profiler, None
        profiler.__exit__(None, None, None)
        p = self.params
        folder = Path(p.output_path).expanduser()
        folder.mkdir(parents=True, exist_ok=True)
        self.trace = _unique(folder / f"{_stem(p)}{TRACE_SUFFIX}")
        profiler.export_chrome_trace(str(self.trace))
        logger.info("profile: denoising steps %s traced in %s", ", ".join(map(str, self.profiled)), self.trace)

    def step_seconds(self) -> list[float]:
        if self.steps_start is None:
            return []
        starts = [self.steps_start, *self.step_ends[:-1]]
        return [end - start for start, end in zip(starts, self.step_ends)]

    def write(self, result: GenerationResult, info: dict) -> Path | None:
        """The perf dump of a finished request (None without --perf-dump-path)."""
        p = self.params
        if not p.perf_dump_path:
            return None
        steps = self.step_seconds()
        dump = {
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "pipeline": info.get("pipeline"), "backend": info.get("backend"), "family": info.get("family"),
            "device": info.get("device"), "attention_backend": info.get("attention_backend"),
            "request": {"prompt": result.prompt, "seed": result.seed, "height": result.height, "width": result.width,
                        "num_frames": result.num_frames, "num_inference_steps": p.num_inference_steps,
                        "guidance_scale": p.guidance_scale},
            "stages_s": {k: v for k, v in result.timings.items() if k != "total"},
            "total_s": result.timings.get("total"),
            "steps_s": steps,
            "step_mean_s": sum(steps) / len(steps) if steps else None,
            "peak_memory_bytes": result.peak_memory_bytes,
            "files": [str(f) for f in result.files],
            "trace": str(self.trace) if self.trace else None,
        }
        path = Path(p.perf_dump_path).expanduser()
        if path.is_dir() or p.perf_dump_path.endswith(("/", "\\")):
            path = _unique(path / f"{_stem(p)}{PERF_SUFFIX}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(dump, indent=2))
        except OSError as e:
            raise ConfigError(f"perf_dump_path {p.perf_dump_path!r}: cannot write it ({e.strerror})") from None
        logger.info("perf dump: %s", path)
        return path


def _stem(p: SamplingParams) -> str:
    return Path(p.output_file_name).stem if p.output_file_name else default_stem(p.prompt, p.seed)


def _unique(path: Path) -> Path:
    """`path`, or name-1, name-2, ... when it exists (a dump never replaces another request's)."""
    stem, suffix = path.name.split(".", 1)[0], "." + path.name.split(".", 1)[1]
    candidate, n = path, 1
    while candidate.exists():
        candidate, n = path.with_name(f"{stem}-{n}{suffix}"), n + 1
    return candidate
