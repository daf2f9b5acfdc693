"""RoPE of q and k in one launch (ops/rope.py gives the math): one program per token, rotating
every q head and every k head by that token's row of the cos/sin tables, which is loaded once.
Pairs are interleaved, (x[2i], x[2i+1]), or half-split, (x[i], x[i + D/2]). fp32 math."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from sglang_diffusion.triton_kernels._common import TL_DTYPES, next_pow2


@triton.jit
def _rotate_heads(X, XOut, row, c, s, num_heads, head_dim, half,
                  BLOCK_H: tl.constexpr, BLOCK_P: tl.constexpr, INTERLEAVED: tl.constexpr):
    offs_h = tl.arange(0, BLOCK_H)
    offs_p = tl.arange(0, BLOCK_P)
    mask = (offs_h < num_heads)[:, None] & (offs_p < half)[None, :]
    base = row * num_heads * head_dim + offs_h[:, None] * head_dim
    if INTERLEAVED:
        i1 = base + 2 * offs_p[None, :]
        i2 = i1 + 1
    else:
        i1 = base + offs_p[None, :]
        i2 = i1 + half
    x1 = tl.load(X + i1, mask=mask, other=0.0).to(tl.float32)  # [BLOCK_H, BLOCK_P]
    x2 = tl.load(X + i2, mask=mask, other=0.0).to(tl.float32)
    tl.store(XOut + i1, (x1 * c - x2 * s).to(XOut.dtype.element_ty), mask=mask)
    tl.store(XOut + i2, (x1 * s + x2 * c).to(XOut.dtype.element_ty), mask=mask)


@triton.jit
def _rope_kernel(
    Q, K, QOut, KOut, Cos, Sin,
    seq_len, heads_q, heads_k, head_dim,
    BLOCK_HQ: tl.constexpr, BLOCK_HK: tl.constexpr, BLOCK_P: tl.constexpr, INTERLEAVED: tl.constexpr,
):
    row = tl.program_id(0)  # token b * S + s
    half = head_dim // 2
    offs_p = tl.arange(0, BLOCK_P)
    t = (row % seq_len) * half + offs_p
    c = tl.load(Cos + t, mask=offs_p < half, other=0.0)[None, :]  # [1, BLOCK_P]
    s = tl.load(Sin + t, mask=offs_p < half, other=0.0)[None, :]
    _rotate_heads(Q, QOut, row, c, s, heads_q, head_dim, half, BLOCK_HQ, BLOCK_P, INTERLEAVED)
    _rotate_heads(K, KOut, row, c, s, heads_k, head_dim, half, BLOCK_HK, BLOCK_P, INTERLEAVED)


def rope_fwd(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
             interleaved: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """q [B, S, Hq, D], k [B, S, Hk, D], cos, sin [S, D/2] fp32 -> rotated (q, k), contiguous."""
    q, k, cos, sin = (t.contiguous() for t in (q, k, cos, sin))
    q_out, k_out = torch.empty_like(q), torch.empty_like(k)
    b, s, hq, d = q.shape
    if q.numel() == 0 and k.numel() == 0:
        return q_out, k_out
    _rope_kernel[(b * s,)](
        q, k, q_out, k_out, cos, sin, s, hq, k.shape[2], d,
        BLOCK_HQ=next_pow2(hq), BLOCK_HK=next_pow2(k.shape[2]), BLOCK_P=next_pow2(d // 2), INTERLEAVED=interleaved,
    )
    return q_out, k_out


def _aot_specs():
    for dtype, interleaved in (("bfloat16", True), ("float16", False)):
        ptr = "*" + TL_DTYPES[dtype]
        signature = {"Q": ptr, "K": ptr, "QOut": ptr, "KOut": ptr, "Cos": "*fp32", "Sin": "*fp32",
                     "seq_len": "i32", "heads_q": "i32", "heads_k": "i32", "head_dim": "i32"}
        constexprs = {"BLOCK_HQ": 16, "BLOCK_HK": 16, "BLOCK_P": 64, "INTERLEAVED": interleaved}
        yield f"rope {dtype} interleaved={interleaved}", _rope_kernel, signature, constexprs, 4, 1

AOT_SPECS = _aot_specs
