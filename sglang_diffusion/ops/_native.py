"""sglang_diffusion._C, the compiled kernels, loaded on first use.

The extension registers its ops as ``torch.ops.sglang_diffusion_C.*`` when imported. It may be
missing (a build without torch in the build environment) or unloadable (built against another
torch); the ops then run on their pure-PyTorch paths, and that is logged once, with the reason.
"""

from __future__ import annotations

import functools
import importlib
import logging
from dataclasses import dataclass
from typing import Any

import torch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class NativeLibrary:
    """The loaded extension's ops (``torch.ops.sglang_diffusion_C``), or why there are none."""

    ops: Any | None
    missing_reason: str | None = None
    with_cuda: bool = False  # built with the csrc/cuda kernels

    @property
    def available(self) -> bool:
        return self.ops is not None

    @property
    def cpu_isa(self) -> str | None:
        """Which CPU build of the kernels runs now: "default", "avx2" or "avx512" (csrc/cpu/isa.h:
        the widest this CPU and torch allow, or the one SGLD_CPU_ISA names)."""
        return self.ops.cpu_isa() if self.available else None

    @property
    def cpu_isas(self) -> tuple[str, ...]:
        """The CPU builds this CPU can run, narrowest first (none without _C)."""
        if not self.available:
            return ()
        # A _C built before the AVX-512 builds reports only the one it runs.
        return tuple(self.ops.cpu_isas()) if hasattr(self.ops, "cpu_isas") else (self.ops.cpu_isa(),)


@functools.cache
def native_library() -> NativeLibrary:
    """Imports sglang_diffusion._C once (torch is imported first: _C links against it)."""
    try:
        importlib.import_module("sglang_diffusion._C")
    except (ImportError, OSError) as exc:
        reason = f"{type(exc).__name__}: {exc}"
        logger.warning("sglang_diffusion._C not built: running on pure-PyTorch paths (%s)", reason)
        return NativeLibrary(ops=None, missing_reason=reason)
    ops = torch.ops.sglang_diffusion_C
    with_cuda = ops.with_cuda() if hasattr(ops, "with_cuda") else False
    return NativeLibrary(ops=ops, with_cuda=with_cuda)
