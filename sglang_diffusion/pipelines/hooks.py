"""Per-step hooks a pipeline calls after each denoising step: progress reporting and
cancellation (a hook may raise `RequestCancelled`, which stops the pipeline there)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from sglang_diffusion.errors import RequestCancelled


@dataclass
class StepHooks:
    on_progress: Callable[[int, int], None] | None = None  # (steps done, total steps)
    is_cancelled: Callable[[], bool] | None = None

    def after_step(self, done: int, total: int) -> None:
        if self.is_cancelled is not None and self.is_cancelled():
            raise RequestCancelled(f"cancelled after {done} of {total} denoising steps")
        if self.on_progress is not None:
            self.on_progress(done, total)
