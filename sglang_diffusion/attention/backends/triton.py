"""``triton``: our FA2-style Triton kernel (triton_kernels/attention.py), exact, with its
log-sum-exp; CUDA only (a CPU has only Triton's interpreter, far too slow to serve)."""

from __future__ import annotations

from typing import Optional

from sglang_diffusion.attention.backends.base import AttentionBackend
from sglang_diffusion.ops import _dispatch
from sglang_diffusion.ops.attention import attention


class TritonBackend(AttentionBackend):
    name = "triton"
    exact = True

    @classmethod
    def kernel_why_not(cls, kernel, device, dtype, head_dim) -> Optional[str]:
        reason = _dispatch.triton_why_not(device)
        return reason or (f"head dim {head_dim} > 256" if head_dim > 256 else None)

    def forward(self, q, k, v, scale: Optional[float] = None):
        return attention(q, k, v, scale, backend="triton")
