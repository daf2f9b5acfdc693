"""Progress of the long loops of a request (denoising steps, VAE tiles).

On a terminal: a tqdm bar. Anywhere else (a log file, a CI job, a notebook cell, a pipe), a bar
would be one unreadable line or nothing, so progress is a log line instead: at most one every
`interval_s` seconds, plus one when the loop ends, each with step i/N, the time so far and the
time left at the rate so far ("denoising: step 12/30, 24.1 s, ETA 36.2 s"). Nothing at all
where the log is above INFO (`--log-level warning`, the ranks other than 0).
"""

from __future__ import annotations

import logging
import sys
import time

logger = logging.getLogger("sglang_diffusion.progress")

LOG_INTERVAL_S = 5.0


def _seconds(s: float) -> str:
    return f"{s:.1f} s" if s < 120 else f"{int(s // 60)} min {int(s % 60):02d} s"


class Progress:
    """`update(done, total)` after each unit of work; `close()` at the end (or use `with`).

    `total` may first be known at the first update (diffusers' callbacks give it then)."""

    def __init__(self, what: str, total: int | None = None, *, unit: str = "step",
                 interval_s: float = LOG_INTERVAL_S, stream=None):
        self.what, self.total, self.unit, self.interval_s = what, total, unit, interval_s
        self.stream = stream if stream is not None else sys.stderr
        self.start = self._last_log = time.monotonic()
        self.done = 0
        self._bar = None
        self.quiet = not logger.isEnabledFor(logging.INFO)
        if not self.quiet and _is_terminal(self.stream):
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=what, unit=unit, file=self.stream, dynamic_ncols=True)

    def update(self, done: int, total: int | None = None) -> None:
        if total is not None and total != self.total:
            self.total = total
            if self._bar is not None:
                self._bar.total = total
        if self._bar is not None:
            self._bar.update(done - self.done)
            self.done = done
            return
        self.done = done
        now = time.monotonic()
        if self.quiet:
            return
        if done == self.total or now - self._last_log >= self.interval_s:
            self._last_log = now
            logger.info("%s", self.line(now))

    def line(self, now: float | None = None) -> str:
        elapsed = (time.monotonic() if now is None else now) - self.start
        text = f"{self.what}: {self.unit} {self.done}/{self.total if self.total is not None else '?'}, " \
               f"{_seconds(elapsed)}"
        if self.total and 0 < self.done < self.total:
            text += f", ETA {_seconds(elapsed / self.done * (self.total - self.done))}"
        return text

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.total is None and self.done and not self.quiet:  # the count was open-ended: its end
            logger.info("%s", self.line())
            self.done = 0

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or file-like stream without a terminal
        return False
