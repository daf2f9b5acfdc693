"""Norm fused with adaLN modulation (ops/norm.py gives the math), one program per row:

    [gated]  r = residual + gate * x, stored (rounded to its dtype), then normalised
    out = norm(r) * (1 + scale) + shift      norm: LayerNorm or RMSNorm, optional weight / bias

The modulation tensors are read through (batch, seq) strides, so [D], [B, 1, D] and [B, S, D]
(and strided chunks of one table) all work without a copy. fp32 statistics (two passes over a
row held in registers), outputs in the activation's dtype.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from sglang_diffusion.triton_kernels._common import TL_DTYPES, next_pow2


@triton.jit
def _norm_modulate_kernel(
    X, Residual, Gate, Scale, Shift, W, Bias, Out, ResidualOut,
    seq_len, dim, eps,
    gate_sb, gate_ss, scale_sb, scale_ss, shift_sb, shift_ss,
    BLOCK: tl.constexpr, RMS: tl.constexpr, GATED: tl.constexpr, HAS_GATE: tl.constexpr,
    HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    b = row // seq_len
    s = row % seq_len
    offs = tl.arange(0, BLOCK)
    mask = offs < dim
    x = tl.load(X + row * dim + offs, mask=mask, other=0.0).to(tl.float32)
    if GATED:
        r = tl.load(Residual + row * dim + offs, mask=mask, other=0.0).to(tl.float32)
        if HAS_GATE:
            g = tl.load(Gate + b * gate_sb + s * gate_ss + offs, mask=mask, other=0.0).to(tl.float32)
            r = r + g * x
        else:
            r = r + x
        r_stored = r.to(ResidualOut.dtype.element_ty)
        tl.store(ResidualOut + row * dim + offs, r_stored, mask=mask)
        x = r_stored.to(tl.float32)  # normalise what was stored, as the unfused code does
    if RMS:
        xc = x
    else:
        xc = tl.where(mask, x - tl.sum(x, 0) / dim, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, 0) / dim + eps)
    y = xc * rstd
    if HAS_WEIGHT:
        y = y * tl.load(W + offs, mask=mask, other=0.0)
    if HAS_BIAS:
        y = y + tl.load(Bias + offs, mask=mask, other=0.0)
    sc = tl.load(Scale + b * scale_sb + s * scale_ss + offs, mask=mask, other=0.0).to(tl.float32)
    sh = tl.load(Shift + b * shift_sb + s * shift_ss + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(Out + row * dim + offs, (y * (1.0 + sc) + sh).to(Out.dtype.element_ty), mask=mask)


def _mod_strides(t: torch.Tensor, x: torch.Tensor) -> tuple[int, int]:
    """(batch, seq) strides of t broadcast to x [B, S, D] (0 where broadcast)."""
    e = t.expand(x.shape)
    return e.stride(0), e.stride(1)


def norm_modulate_fwd(
    x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, weight: Optional[torch.Tensor],
    bias: Optional[torch.Tensor], eps: float, norm_type: str,
    residual: Optional[torch.Tensor] = None, gate: Optional[torch.Tensor] = None, gated: bool = False,
):
    """x [B, S, D] (the branch output when gated); returns out, or (residual_out, out) when gated.
    scale, shift, gate broadcast to [B, S, D] with a contiguous last dim."""
    base = residual if gated else x
    b, s, d = base.shape
    x = x.contiguous()
    residual = residual.contiguous() if gated else None
    out = torch.empty_like(base, memory_format=torch.contiguous_format)
    r_out = torch.empty_like(out) if gated else None
    if base.numel():
        w = weight.float().contiguous() if weight is not None else out
        bi = bias.float().contiguous() if bias is not None else out
        g = gate if gate is not None else scale
        _norm_modulate_kernel[(b * s,)](
            x, residual if gated else x, g, scale, shift, w, bi, out, r_out if gated else out,
            s, d, eps, *_mod_strides(g, base), *_mod_strides(scale, base), *_mod_strides(shift, base),
            BLOCK=next_pow2(d), RMS=norm_type == "rms", GATED=gated, HAS_GATE=gate is not None,
            HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None, num_warps=4 if d <= 2048 else 8,
        )
    return (r_out, out) if gated else out


def _aot_specs():
    for dtype, gated, rms in (("bfloat16", True, False), ("float16", False, True)):
        ptr = "*" + TL_DTYPES[dtype]
        signature = {"X": ptr, "Residual": ptr, "Gate": ptr, "Scale": ptr, "Shift": ptr, "W": "*fp32",
                     "Bias": "*fp32", "Out": ptr, "ResidualOut": ptr, "seq_len": "i32", "dim": "i32",
                     "eps": "fp32", **{f"{t}_s{x}": "i32" for t in ("gate", "scale", "shift") for x in "bs"}}
        constexprs = {"BLOCK": 2048, "RMS": rms, "GATED": gated, "HAS_GATE": gated, "HAS_WEIGHT": True,
                      "HAS_BIAS": not rms}
        yield f"norm {dtype} gated={gated} rms={rms}", _norm_modulate_kernel, signature, constexprs, 4, 1

AOT_SPECS = _aot_specs
