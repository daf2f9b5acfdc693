"""``sage_attn``: SageAttention, approximate (INT8 Q.K^T with K smoothing, 16-bit P.V); see
ops/sage_attention.py for the method and its error bound. Never chosen by ``auto``.

- CUDA: the sageattention package when it is installed (its own kernels; ``qk_quant_gran``
  per_warp or per_thread), otherwise our Triton kernel (``qk_quant_gran`` per_block or
  per_token, with ``block_q`` / ``block_k``).
- CPU: the torch emulation of the same quantisation (ops.sage_attention's reference path). It
  runs, with the same numerics as the Triton kernel, but slower than exact attention: it only
  emulates INT8 arithmetic.

Options: kernel (auto, sageattention, triton, torch), qk_quant_gran, block_q, block_k, smooth_k.
"""

from __future__ import annotations

from typing import Optional

import torch

from sglang_diffusion.attention.backends.base import AttentionBackend, package_installed
from sglang_diffusion.attention.config import Option
from sglang_diffusion.errors import ConfigError
from sglang_diffusion.ops import _dispatch
from sglang_diffusion.ops.sage_attention import sage_attention

KERNELS = ("auto", "sageattention", "triton", "torch")
PACKAGE_GRANS = ("per_warp", "per_thread")
OUR_GRANS = ("per_block", "per_token")


class SageAttentionBackend(AttentionBackend):
    name = "sage_attn"
    exact = False
    OPTIONS = {
        "kernel": Option("auto", "Which SageAttention implementation runs.", choices=KERNELS),
        "qk_quant_gran": Option("auto", "INT8 scale granularity of Q and K: per_block or per_token for our "
                                "kernels, per_warp or per_thread for the sageattention package.",
                                choices=("auto", *OUR_GRANS, *PACKAGE_GRANS)),
        "block_q": Option(128, "Tokens of Q per INT8 scale (per_block)."),
        "block_k": Option(64, "Tokens of K per INT8 scale (per_block)."),
        "smooth_k": Option(True, "Subtract K's mean over tokens before quantising (softmax-invariant)."),
    }

    def __init__(self, device, dtype, head_dim, options):
        super().__init__(device, dtype, head_dim, options)
        self._check_options()

    @classmethod
    def kernels(cls, device, options):
        wanted = options.get("kernel", "auto")
        return ["sageattention", "triton", "torch"] if wanted == "auto" else [wanted]

    @classmethod
    def kernel_why_not(cls, kernel, device, dtype, head_dim) -> Optional[str]:
        if kernel == "sageattention":
            if device.type != "cuda":
                return "the sageattention package runs on CUDA only"
            if not package_installed("sageattention"):
                return "the sageattention package is not installed"
            if dtype not in (torch.float16, torch.bfloat16):
                return f"sageattention takes float16 or bfloat16, not {dtype}"
            return None
        if kernel == "triton":
            reason = _dispatch.triton_why_not(device)
            if reason is None and dtype not in (torch.float16, torch.bfloat16):
                reason = f"the Triton kernel takes float16 or bfloat16, not {dtype}"
            return reason or (f"head dim {head_dim} > 256" if head_dim > 256 else None)
        return None  # torch: runs anywhere

    def _check_options(self) -> None:
        gran = self.options.get("qk_quant_gran", "auto")
        kernel = self.kernel
        valid = PACKAGE_GRANS if kernel == "sageattention" else OUR_GRANS
        if gran != "auto" and gran not in valid:
            raise ConfigError(f"attention_backend_config: qk_quant_gran={gran!r} is not available with the "
                              f"{kernel} kernel (valid: {', '.join(valid)})")
        if self.options.get("block_q", 128) < 1 or self.options.get("block_k", 64) < 1:
            raise ConfigError("attention_backend_config: block_q and block_k must be >= 1")

    def forward(self, q, k, v, scale: Optional[float] = None):
        gran = self.options["qk_quant_gran"]
        if self.kernel == "sageattention":
            from sageattention import sageattn

            kwargs = {} if gran == "auto" else {"qk_quant_gran": gran}
            out, lse = sageattn(q, k, v, tensor_layout="NHD", is_causal=False, sm_scale=scale,
                                smooth_k=self.options["smooth_k"], return_lse=True, **kwargs)
            return out, lse.float()
        return sage_attention(
            q, k, v, scale, "per_block" if gran == "auto" else gran, self.options["block_q"],
            self.options["block_k"], self.options["smooth_k"], impl=self.kernel,
        )
