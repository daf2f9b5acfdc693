"""FlashAttention-2 forward with the log-sum-exp, non-causal, in the [B, S, H, D] layout.

Follows Dao, "FlashAttention-2" (2023) and Triton's fused-attention tutorial: one program per
(block of BLOCK_M queries, batch * head), a loop over key blocks with the online softmax in
base 2 (the scale is pre-multiplied by log2(e), so exp2 replaces exp), the output rescaled only
by the running max, and lse = (m + log2 l) * ln 2 stored per query.

- fp32 inputs use an IEEE fp32 dot (``input_precision="ieee"``), not TF32: the op is exact.
- Under the interpreter, bf16 ``tl.dot`` is broken (ENVIRONMENT.md), so 16-bit operands are
  widened to fp32 first (UPCAST); P is still rounded to the input dtype, as on a GPU.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from sglang_diffusion.triton_kernels._common import TL_DTYPES, interpreting, next_pow2


@triton.jit
def _load_queries(q_base, stride_qs, offs_m, mask_m, offs_d, mask_d, UPCAST: tl.constexpr):
    """The [BLOCK_M, BLOCK_D] queries of one (batch, head), zero outside the masks."""
    q = tl.load(q_base + offs_m[:, None] * stride_qs + offs_d[None, :], mask=mask_m[:, None] & mask_d[None, :],
                other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    return q


@triton.jit
def _store_rows(o_base, stride_os, lse_base, offs_m, mask_m, offs_d, mask_d, m_i, l_i, acc):
    """out = acc / l and lse = (m + log2 l) ln 2 of the block's queries."""
    acc = acc / l_i[:, None]
    tl.store(o_base + offs_m[:, None] * stride_os + offs_d[None, :], acc.to(o_base.dtype.element_ty),
             mask=mask_m[:, None] & mask_d[None, :])
    lse = (m_i + tl.math.log2(l_i)) * 0.6931471805599453  # back to natural log
    tl.store(lse_base + offs_m, lse, mask=mask_m)


@triton.jit
def _key_block(q, k_base, v_base, stride_ks, stride_vs, start_n, end_n, offs_n, offs_d, mask_d, m_i, l_i, acc,
               qk_scale, UPCAST: tl.constexpr, IEEE: tl.constexpr):
    """One online-softmax step: the BLOCK_N keys from start_n (those before end_n) against the
    queries q [BLOCK_M, BLOCK_D] -> the updated (m_i, l_i, acc). Shared with the sliding tile
    kernel, which calls it over its window's key runs only."""
    cols = start_n + offs_n
    mask_n = cols < end_n
    kt = tl.load(k_base + cols[None, :] * stride_ks + offs_d[:, None],
                 mask=mask_n[None, :] & mask_d[:, None], other=0.0)  # [BLOCK_D, BLOCK_N]
    if UPCAST:
        kt = kt.to(tl.float32)
    if IEEE:
        s = tl.dot(q, kt, input_precision="ieee")
    else:
        s = tl.dot(q, kt)
    s = tl.where(mask_n[None, :], s * qk_scale, float("-inf"))  # [BLOCK_M, BLOCK_N], log2 units
    m_new = tl.maximum(m_i, tl.max(s, 1))
    p = tl.math.exp2(s - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    v = tl.load(v_base + cols[:, None] * stride_vs + offs_d[None, :],
                mask=mask_n[:, None] & mask_d[None, :], other=0.0)  # [BLOCK_N, BLOCK_D]
    p = p.to(v_base.dtype.element_ty)  # P in the input dtype, as FlashAttention does
    if UPCAST:
        acc = tl.dot(p.to(tl.float32), v.to(tl.float32), acc)
    elif IEEE:
        acc = tl.dot(p, v, acc, input_precision="ieee")
    else:
        acc = tl.dot(p, v, acc)
    return m_new, l_i, acc


@triton.jit
def _attention_fwd_kernel(
    Q, K, V, Out, Lse,
    qk_scale,  # softmax scale * log2(e)
    stride_qb, stride_qs, stride_qh,
    stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh,
    stride_ob, stride_os, stride_oh,
    num_heads, seq_q, seq_k, head_dim,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr, IEEE: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // num_heads
    h = pid_bh % num_heads
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < seq_q
    mask_d = offs_d < head_dim

    q = _load_queries(Q + b * stride_qb + h * stride_qh, stride_qs, offs_m, mask_m, offs_d, mask_d, UPCAST)
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start_n in range(0, seq_k, BLOCK_N):
        m_i, l_i, acc = _key_block(q, k_base, v_base, stride_ks, stride_vs, start_n, seq_k, offs_n, offs_d, mask_d,
                                   m_i, l_i, acc, qk_scale, UPCAST, IEEE)

    _store_rows(Out + b * stride_ob + h * stride_oh, stride_os, Lse + pid_bh * seq_q, offs_m, mask_m, offs_d, mask_d,
                m_i, l_i, acc)


def _blocks(head_dim: int) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) for a GPU; tiny blocks in the interpreter."""
    if interpreting():
        return 16, 16, 1, 1
    if head_dim <= 64:
        return 128, 64, 4, 3
    return 128, 64, 8, 2


def attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                  block_m: int | None = None, block_n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """q [B, Sq, H, D], k, v [B, Sk, H, D] (D contiguous) -> (out [B, Sq, H, D], lse [B, H, Sq] fp32)."""
    b, sq, h, d = q.shape
    sk = k.shape[1]
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    out = torch.empty(b, sq, h, d, dtype=q.dtype, device=q.device)
    lse = torch.empty(b, h, sq, dtype=torch.float32, device=q.device)
    if sk == 0:
        return out.zero_(), lse.fill_(float("-inf"))
    bm, bn, warps, stages = _blocks(d)
    bm, bn = block_m or bm, block_n or bn
    grid = (triton.cdiv(sq, bm), b * h)
    _attention_fwd_kernel[grid](
        q, k, v, out, lse, scale * math.log2(math.e),
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3],
        h, sq, sk, d,
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=next_pow2(d, 16),
        UPCAST=interpreting() and q.dtype != torch.float32, IEEE=q.dtype == torch.float32,
        num_warps=warps, num_stages=stages,
    )
    return out, lse


def _aot_specs():
    """The launcher's GPU builds: each dtype once, both block configurations covered."""
    for dtype, d in (("float16", 128), ("bfloat16", 64), ("float32", 128)):
        bm, bn, warps, stages = (128, 64, 4, 3) if d <= 64 else (128, 64, 8, 2)
        ptr = "*" + TL_DTYPES[dtype]
        signature = {"Q": ptr, "K": ptr, "V": ptr, "Out": ptr, "Lse": "*fp32", "qk_scale": "fp32",
                     **{f"stride_{t}{x}": "i32" for t in "qkvo" for x in "bsh"},
                     "num_heads": "i32", "seq_q": "i32", "seq_k": "i32", "head_dim": "i32"}
        constexprs = {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_D": d, "UPCAST": False, "IEEE": dtype == "float32"}
        yield f"attention {dtype} d{d}", _attention_fwd_kernel, signature, constexprs, warps, stages

AOT_SPECS = _aot_specs
