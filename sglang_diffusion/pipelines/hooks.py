"""Per-request hooks a pipeline calls: once with the resolved request before its first denoising
step, then after each step, for progress reporting and cancellation (a hook may raise
`RequestCancelled`, which stops the pipeline there)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from sglang_diffusion.errors import RequestCancelled

if TYPE_CHECKING:
    from sglang_diffusion.config.sampling_params import SamplingParams


@dataclass
class StepHooks:
    on_progress: Callable[[int, int], None] | None = None  # (steps done, total steps)
    is_cancelled: Callable[[], bool] | None = None
    on_start: Callable[["SamplingParams"], None] | None = None  # the resolved request, before the first step

    def before_steps(self, params: "SamplingParams") -> None:
        if self.on_start is not None:
            self.on_start(params)

    def after_step(self, done: int, total: int) -> None:
        if self.is_cancelled is not None and self.is_cancelled():
            raise RequestCancelled(f"cancelled after {done} of {total} denoising steps")
        if self.on_progress is not None:
            self.on_progress(done, total)
