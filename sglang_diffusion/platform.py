"""The device this process computes on and what it can do there.

Precision on a CPU is decided by measurement (sglang_diffusion/precision.py): bf16 where this
CPU runs it fast (AMX, AVX-512-BF16), fp32 where it does not (AVX2), and the log says which and
why, with the measured rates.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from sglang_diffusion import precision

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Platform:
    device: torch.device

    @classmethod
    def current(cls, local_rank: int = 0) -> "Platform":
        if torch.cuda.is_available():
            return cls(torch.device("cuda", local_rank % torch.cuda.device_count()))
        return cls(torch.device("cpu"))

    @property
    def is_cpu(self) -> bool:
        return self.device.type == "cpu"

    @property
    def default_precision(self) -> str:
        """bf16 on a GPU; on a CPU what SGLD_CPU_PRECISION names, else bf16 where measured
        clearly faster than fp32, else fp32."""
        if not self.is_cpu:
            return "bf16"
        forced = precision.forced_default()
        if forced is not None:
            logger.info("default precision on the CPU: %s (set by %s)", forced, precision.FORCE_ENV)
            return forced
        chosen, reason = precision.default_choice(precision.cpu_rates())
        logger.info("default precision on the CPU: %s (%s)", chosen, reason)
        return chosen

    @property
    def dist_backend(self) -> str:
        return "gloo" if self.is_cpu else "nccl"

    def usable_dtype(self, dtype: torch.dtype, what: str) -> torch.dtype:
        """``dtype``, except a CPU runs fp16/bf16 as fp32 where they are measured slower than
        fp32 (with a warning giving both rates)."""
        if not self.is_cpu or dtype == torch.float32:
            return dtype
        name = next(n for n, d in precision.DTYPES.items() if d == dtype)
        chosen, reason = precision.choose(name, precision.cpu_rates())
        requested = str(dtype).removeprefix("torch.")
        if chosen == name:
            logger.info("%s: %s on the CPU (%s)", what, requested, reason)
            return dtype
        logger.warning("%s: %s requested, running in fp32 on the CPU (%s)", what, requested, reason)
        return torch.float32
