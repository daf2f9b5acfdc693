"""The device this process computes on and what it can do there."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

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
        return "fp32" if self.is_cpu else "bf16"

    @property
    def dist_backend(self) -> str:
        return "gloo" if self.is_cpu else "nccl"

    def usable_dtype(self, dtype: torch.dtype, what: str) -> torch.dtype:
        """fp16/bf16 run as fp32 on a CPU: bf16 matmul there runs at under 1% of fp32's rate."""
        if self.is_cpu and dtype != torch.float32:
            logger.warning("%s: %s requested, running in fp32 on the CPU (reduced-precision matmul "
                           "is far slower than fp32 here)", what, str(dtype).removeprefix("torch."))
            return torch.float32
        return dtype
