"""Per-stage wall-clock timings of a pipeline whose loop we do not own (diffusers), taken with
forward hooks on its components: the stage of a module is the name of its component."""

from __future__ import annotations

import functools
import time
from collections import defaultdict

import torch


def _sync(module: torch.nn.Module) -> None:
    p = next(module.parameters(), None)
    if p is not None and p.device.type == "cuda":
        torch.cuda.synchronize(p.device)


class StageTimer:
    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self._depth: dict[str, int] = defaultdict(int)
        self._start: dict[str, float] = {}

    def _enter(self, stage: str, module: torch.nn.Module) -> None:
        if self._depth[stage] == 0:
            _sync(module)
            self._start[stage] = time.perf_counter()
        self._depth[stage] += 1

    def _exit(self, stage: str, module: torch.nn.Module) -> None:
        self._depth[stage] -= 1
        if self._depth[stage] == 0:
            _sync(module)
            self.seconds[stage] += time.perf_counter() - self._start[stage]

    def watch_forward(self, stage: str, module: torch.nn.Module) -> None:
        module.register_forward_pre_hook(lambda m, args: self._enter(stage, m))
        module.register_forward_hook(lambda m, args, out: self._exit(stage, m))

    def watch_method(self, stage: str, module: torch.nn.Module, method: str) -> None:
        original = getattr(module, method)

        @functools.wraps(original)
        def timed(*args, **kwargs):
            self._enter(stage, module)
            try:
                return original(*args, **kwargs)
            finally:
                self._exit(stage, module)

        setattr(module, method, timed)

    def take(self) -> dict[str, float]:
        """The seconds per stage since the last take, and reset."""
        out = dict(self.seconds)
        self.seconds.clear()
        self._depth.clear()
        return out
