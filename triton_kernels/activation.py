"""Tanh-approximate GELU (ops/activation.py gives the math), elementwise over a flat buffer:
one program per BLOCK elements, fp32 math, output in the input's dtype. Computed as
x / (1 + exp(-2u)): exp overflowing to inf gives -0 for very negative x, never NaN."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from sglang_diffusion.triton_kernels._common import TL_DTYPES, interpreting

# -2u = x (K1 + K3 x^2)
K1 = tl.constexpr(-2.0 * 0.7978845608028654)  # -2 sqrt(2/pi)
K3 = tl.constexpr(-2.0 * 0.7978845608028654 * 0.044715)


@triton.jit
def _gelu_tanh_kernel(X, Out, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    y = x / (1.0 + tl.exp(x * (K1 + K3 * x * x)))
    tl.store(Out + offs, y.to(Out.dtype.element_ty), mask=mask)


def gelu_tanh_fwd(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out = gelu_tanh(x); both contiguous, of one shape and dtype; out may be x."""
    n = x.numel()
    block = 128 if interpreting() else 1024
    if n:
        _gelu_tanh_kernel[(triton.cdiv(n, block),)](x, out, n, BLOCK=block, num_warps=4)
    return out


def _aot_specs():
    for dtype in ("bfloat16", "float32"):
        ptr = "*" + TL_DTYPES[dtype]
        yield f"gelu_tanh {dtype}", _gelu_tanh_kernel, {"X": ptr, "Out": ptr, "n": "i64"}, {"BLOCK": 1024}, 4, 1


AOT_SPECS = _aot_specs
