"""``fa``: flash attention, exact, with its log-sum-exp.

- CUDA: the flash-attn package when it is installed (fp16/bf16, head dim <= 256, a multiple of
  8), otherwise our kernels through ops.attention (Triton, or _C's CUDA kernel).
- CPU: _C's tiled online-softmax kernel (csrc/cpu/attention.cpp) through ops.attention.

Option ``kernel``: auto (the above), flash_attn, triton or native, to pin one.
"""

from __future__ import annotations

from typing import Optional

import torch

from sglang_diffusion.attention.backends.base import AttentionBackend, package_installed
from sglang_diffusion.attention.config import Option
from sglang_diffusion.ops import _dispatch
from sglang_diffusion.ops.attention import attention

KERNELS = ("auto", "flash_attn", "triton", "native")


class FlashAttentionBackend(AttentionBackend):
    name = "fa"
    exact = True
    OPTIONS = {"kernel": Option("auto", "Which flash kernel runs.", choices=KERNELS)}

    @classmethod
    def kernels(cls, device, options):
        wanted = options.get("kernel", "auto")
        if wanted != "auto":
            return [wanted]
        return ["flash_attn", "triton", "native"] if device.type == "cuda" else ["native"]

    @classmethod
    def kernel_why_not(cls, kernel, device, dtype, head_dim) -> Optional[str]:
        if kernel == "flash_attn":
            if device.type != "cuda":
                return "the flash-attn package runs on CUDA only"
            if not package_installed("flash_attn"):
                return "the flash-attn package is not installed"
            if dtype not in (torch.float16, torch.bfloat16):
                return f"flash-attn takes float16 or bfloat16, not {dtype}"
            if head_dim > 256 or head_dim % 8:
                return f"flash-attn takes head dims <= 256 that are multiples of 8, not {head_dim}"
            return None
        if kernel == "triton":
            reason = _dispatch.triton_why_not(device)
            return reason or (f"head dim {head_dim} > 256" if head_dim > 256 else None)
        reason = _dispatch.native_why_not(device, "attention_out")
        if reason is None and dtype not in (torch.float32, torch.bfloat16, torch.float16):
            reason = f"the _C kernel takes float32, bfloat16 or float16, not {dtype}"
        return reason

    def forward(self, q, k, v, scale: Optional[float] = None):
        if self.kernel == "flash_attn":
            from flash_attn import flash_attn_func

            out, lse, _ = flash_attn_func(q, k, v, softmax_scale=scale, causal=False, return_attn_probs=True)
            return out, lse  # [B, Sq, H, D], [B, H, Sq]
        return attention(q, k, v, scale, backend=self.kernel)
