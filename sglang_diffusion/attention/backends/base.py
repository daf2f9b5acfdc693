"""What every attention backend declares and does.

A backend class says, before anything runs, whether it can serve a device, dtype and head dim
(``why_not`` returns the list of reasons it cannot, empty when it can), which options
``--attention-backend-config`` may set (``OPTIONS``), and whether it is exact. An instance is
bound to one device, dtype and head dim and to its validated options; ``forward`` takes and
returns the [B, S, H, D] layout:

    forward(q [B, Sq, H, D], k [B, Sk, H, D], v [B, Sk, H, D], scale=None)
        -> (out [B, Sq, H, D], lse [B, H, Sq] float32, or None where ``returns_lse`` is False)
"""

from __future__ import annotations

import importlib.util
from typing import Any, ClassVar, Optional

import torch

from sglang_diffusion.attention.config import Option


class AttentionBackend:
    name: ClassVar[str]
    exact: ClassVar[bool] = True
    OPTIONS: ClassVar[dict[str, Option]] = {}

    def __init__(self, device: torch.device, dtype: torch.dtype, head_dim: int, options: dict[str, Any]):
        self.device = torch.device(device)
        self.dtype = dtype
        self.head_dim = head_dim
        self.options = dict(options)
        kernel, reasons = self.pick_kernel(self.device, dtype, head_dim, self.options)
        if kernel is None:
            raise AssertionError(f"{self.name} built although it cannot run: {reasons}")
        self.kernel = kernel  # the implementation that runs, for the log

    @classmethod
    def kernels(cls, device: torch.device, options: dict[str, Any]) -> list[str]:
        """The implementations to try, in order of preference."""
        return [cls.name]

    @classmethod
    def kernel_why_not(cls, kernel: str, device: torch.device, dtype: torch.dtype, head_dim: int) -> Optional[str]:
        """None when ``kernel`` can run there, else the reason."""
        return None

    @classmethod
    def pick_kernel(
        cls, device: torch.device, dtype: torch.dtype, head_dim: int, options: dict[str, Any]
    ) -> tuple[Optional[str], list[str]]:
        """(the first kernel that can run, or None; the reasons of those that cannot)."""
        reasons = []
        for kernel in cls.kernels(torch.device(device), options):
            reason = cls.kernel_why_not(kernel, torch.device(device), dtype, head_dim)
            if reason is None:
                return kernel, reasons
            reasons.append(reason if kernel == cls.name else f"{kernel}: {reason}")
        return None, reasons

    @classmethod
    def why_not(cls, device: torch.device, dtype: torch.dtype, head_dim: int, options: dict[str, Any]) -> list[str]:
        """Reasons this backend cannot run on ``device`` in ``dtype`` with ``head_dim``."""
        kernel, reasons = cls.pick_kernel(device, dtype, head_dim, options)
        return [] if kernel is not None else reasons

    @property
    def returns_lse(self) -> bool:
        return True

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: Optional[float] = None
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        raise NotImplementedError

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"{self.name}[{self.kernel}]({self.device}, {str(self.dtype).removeprefix('torch.')}, " \
               f"head_dim={self.head_dim}{', ' + opts if opts else ''})"


def package_installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None
