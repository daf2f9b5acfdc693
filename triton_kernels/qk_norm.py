"""RMS norm of rows for the QK-norm op (ops/qk_norm.py gives the math): a row is one token's
H*D values (across heads, Wan) or one head's D values (per head, FLUX); one program per row,
fp32 statistics, output in the input's dtype."""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from sglang_diffusion.triton_kernels._common import TL_DTYPES, next_pow2


@triton.jit
def _rms_rows_kernel(X, W, Out, width, eps, BLOCK: tl.constexpr, HAS_WEIGHT: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < width
    x = tl.load(X + row * width + offs, mask=mask, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, 0) / width + eps)
    y = x * rstd
    if HAS_WEIGHT:
        y = y * tl.load(W + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(Out + row * width + offs, y.to(Out.dtype.element_ty), mask=mask)


def rms_rows_fwd(x: torch.Tensor, weight: Optional[torch.Tensor], eps: float, width: int) -> torch.Tensor:
    x = x.contiguous()
    out = torch.empty_like(x)
    rows = x.numel() // width if width else 0
    if rows:
        w = weight.float().contiguous() if weight is not None else x
        _rms_rows_kernel[(rows,)](x, w, out, width, eps, BLOCK=next_pow2(width), HAS_WEIGHT=weight is not None,
                                  num_warps=4 if width <= 2048 else 8)
    return out


def qk_rms_norm_fwd(q, k, weight_q, weight_k, eps: float, across_heads: bool):
    """q [B, S, Hq, D], k [B, S', Hk, D] -> RMS-normed (q, k) over H*D or D; contiguous."""
    def width(x):
        return x.shape[2] * x.shape[3] if across_heads else x.shape[3]

    return rms_rows_fwd(q, weight_q, eps, width(q)), rms_rows_fwd(k, weight_k, eps, width(k))


def _aot_specs():
    # per head (D = 128) and across heads (Wan-14B: H*D = 5120)
    for dtype, block in (("bfloat16", 128), ("float16", 8192)):
        ptr = "*" + TL_DTYPES[dtype]
        signature = {"X": ptr, "W": "*fp32", "Out": ptr, "width": "i32", "eps": "fp32"}
        constexprs = {"BLOCK": block, "HAS_WEIGHT": True}
        yield f"qk_norm {dtype} block {block}", _rms_rows_kernel, signature, constexprs, 4 if block <= 2048 else 8, 1

AOT_SPECS = _aot_specs
