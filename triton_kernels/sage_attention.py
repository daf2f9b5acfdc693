"""SageAttention-style attention (ops/sage_attention.py gives the method): INT8 Q.K^T with K
smoothing, 16-bit P.V, fp32 online softmax, as in Zhang et al., "SageAttention" (ICLR 2025)
and its reference Triton kernels.

Two kernels:
- ``_quant_int8_kernel``: one program per block of rows of one (batch, head); x (minus K's
  mean when smoothing, times scale * log2(e) for Q so that the softmax runs in base 2) is
  quantised symmetric INT8 with one scale per block (per_block) or per row (per_token),
  rounding half away from zero as SageAttention's kernel does.
- ``_sage_attention_kernel``: FlashAttention-2's loop with S = int8 dot (int32 accumulate) times
  the per-token scales of both sides, P rounded to V's dtype for the P.V dot.

Scales are stored per token ([B, H, S] fp32), so the attention tiles need not match the
quantisation blocks. Under the interpreter the int8 dot runs in fp32 (exact: |sum| < 2^24) and
P.V widens the rounded P to fp32 (bf16 dots are broken there).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from sglang_diffusion.triton_kernels._common import TL_DTYPES, interpreting, next_pow2


@triton.jit
def _quant_int8_kernel(
    X, Mean, Out, Scale,
    premul,
    stride_xb, stride_xs, stride_xh,
    num_heads, seq_len, head_dim,
    BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr, PER_TOKEN: tl.constexpr, HAS_MEAN: tl.constexpr,
):
    pid_s = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // num_heads
    h = pid_bh % num_heads
    rows = pid_s * BLOCK_S + tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (rows < seq_len)[:, None] & (offs_d < head_dim)[None, :]
    x = tl.load(X + b * stride_xb + h * stride_xh + rows[:, None] * stride_xs + offs_d[None, :],
                mask=mask, other=0.0).to(tl.float32)
    if HAS_MEAN:
        mean = tl.load(Mean + pid_bh * head_dim + offs_d, mask=offs_d < head_dim, other=0.0)
        x = tl.where(mask, x - mean[None, :], 0.0)
    x = x * premul
    if PER_TOKEN:
        scale = tl.max(tl.abs(x), 1) / 127.0  # [BLOCK_S]
    else:
        scale = tl.zeros([BLOCK_S], dtype=tl.float32) + tl.max(tl.abs(x)) / 127.0
    scale = tl.maximum(scale, 1e-30)  # an all-zero block: any scale, its values are 0
    xq = x / scale[:, None]
    xq = tl.minimum(tl.maximum(xq + tl.where(xq >= 0, 0.5, -0.5), -127.0), 127.0)
    out_off = pid_bh * seq_len * head_dim + rows[:, None] * head_dim + offs_d[None, :]  # [B, H, S, D]
    tl.store(Out + out_off, xq.to(tl.int8), mask=mask)
    tl.store(Scale + pid_bh * seq_len + rows, scale, mask=rows < seq_len)


@triton.jit
def _sage_attention_kernel(
    Q8, K8, QScale, KScale, V, Out, Lse,
    stride_vb, stride_vs, stride_vh,
    stride_ob, stride_os, stride_oh,
    num_heads, seq_q, seq_k, head_dim,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, INTERPRET: tl.constexpr,
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

    q = tl.load(Q8 + pid_bh * seq_q * head_dim + offs_m[:, None] * head_dim + offs_d[None, :],
                mask=mask_m[:, None] & mask_d[None, :], other=0)  # [BLOCK_M, BLOCK_D] int8
    q_scale = tl.load(QScale + pid_bh * seq_q + offs_m, mask=mask_m, other=0.0)  # includes scale*log2e
    if INTERPRET:
        q = q.to(tl.float32)
    k_base = K8 + pid_bh * seq_k * head_dim
    v_base = V + b * stride_vb + h * stride_vh

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start_n in range(0, seq_k, BLOCK_N):
        cols = start_n + offs_n
        mask_n = cols < seq_k
        kt = tl.load(k_base + cols[None, :] * head_dim + offs_d[:, None],
                     mask=mask_n[None, :] & mask_d[:, None], other=0)  # [BLOCK_D, BLOCK_N] int8
        k_scale = tl.load(KScale + pid_bh * seq_k + cols, mask=mask_n, other=0.0)
        if INTERPRET:
            s = tl.dot(q, kt.to(tl.float32), input_precision="ieee")
        else:
            s = tl.dot(q, kt).to(tl.float32)  # int32 accumulate
        s = s * q_scale[:, None] * k_scale[None, :]
        s = tl.where(mask_n[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        v = tl.load(v_base + cols[:, None] * stride_vs + offs_d[None, :],
                    mask=mask_n[:, None] & mask_d[None, :], other=0.0)  # [BLOCK_N, BLOCK_D]
        p = p.to(V.dtype.element_ty)
        if INTERPRET:
            acc = tl.dot(p.to(tl.float32), v.to(tl.float32), acc, input_precision="ieee")
        else:
            acc = tl.dot(p, v, acc)
        m_i = m_new

    acc = acc / l_i[:, None]
    o_ptrs = Out + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_os + offs_d[None, :]
    tl.store(o_ptrs, acc.to(Out.dtype.element_ty), mask=mask_m[:, None] & mask_d[None, :])
    tl.store(Lse + pid_bh * seq_q + offs_m, (m_i + tl.math.log2(l_i)) * 0.6931471805599453, mask=mask_m)


def _quantize(x: torch.Tensor, mean, premul: float, block: int, per_token: bool):
    """x [B, S, H, D] -> (int8 [B, H, S, D], per-token scales [B, H, S] fp32)."""
    b, s, h, d = x.shape
    out = torch.empty(b, h, s, d, dtype=torch.int8, device=x.device)
    scale = torch.empty(b, h, s, dtype=torch.float32, device=x.device)
    block_s = 16 if per_token else block
    grid = (triton.cdiv(s, block_s), b * h)
    _quant_int8_kernel[grid](
        x, mean if mean is not None else scale, out, scale, premul, *x.stride()[:3], h, s, d,
        BLOCK_S=block_s, BLOCK_D=next_pow2(d, 16), PER_TOKEN=per_token, HAS_MEAN=mean is not None,
    )
    return out, scale


def sage_attention_fwd(q, k, v, scale: float, qk_quant_gran: str = "per_block", block_q: int = 128,
                       block_k: int = 64, smooth_k: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """q [B, Sq, H, D], k, v [B, Sk, H, D] -> (out [B, Sq, H, D], lse [B, H, Sq] fp32).
    block_q and block_k (per_block) must be powers of two."""
    for name, blk in (("block_q", block_q), ("block_k", block_k)):
        if qk_quant_gran == "per_block" and (blk < 1 or blk & (blk - 1)):
            raise ValueError(f"{name} must be a power of two for the Triton kernel, got {blk}")
    b, sq, h, d = q.shape
    sk = k.shape[1]
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    per_token = qk_quant_gran == "per_token"
    k_mean = k.float().mean(dim=1).contiguous() if smooth_k else None  # [B, H, D]
    log2e = math.log2(math.e)
    q8, q_scale = _quantize(q, None, scale * log2e, block_q, per_token)
    k8, k_scale = _quantize(k, k_mean, 1.0, block_k, per_token)
    out = torch.empty(b, sq, h, d, dtype=q.dtype, device=q.device)
    lse = torch.empty(b, h, sq, dtype=torch.float32, device=q.device)
    bm, bn = (16, 16) if interpreting() else (128, 64)
    grid = (triton.cdiv(sq, bm), b * h)
    _sage_attention_kernel[grid](
        q8, k8, q_scale, k_scale, v, out, lse, *v.stride()[:3], *out.stride()[:3], h, sq, sk, d,
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=next_pow2(d, 16), INTERPRET=interpreting(),
        num_warps=1 if interpreting() else 4 if d <= 64 else 8, num_stages=1 if interpreting() else 2,
    )
    if smooth_k:  # the smoothing shifted each score row by -scale * q.mean(k): add it back
        lse += scale * torch.einsum("bshd,bhd->bhs", q.float(), k_mean)
    return out, lse


def _aot_specs():
    """Each kernel variant once (a CI run compiles them cold, a few seconds each)."""
    for dtype, d, per_token in (("float16", 128, False), ("bfloat16", 64, True)):
        ptr = "*" + TL_DTYPES[dtype]
        signature = {"X": ptr, "Mean": "*fp32", "Out": "*i8", "Scale": "*fp32", "premul": "fp32",
                     "stride_xb": "i32", "stride_xs": "i32", "stride_xh": "i32",
                     "num_heads": "i32", "seq_len": "i32", "head_dim": "i32"}
        constexprs = {"BLOCK_S": 16 if per_token else 128, "BLOCK_D": d, "PER_TOKEN": per_token, "HAS_MEAN": True}
        yield f"sage quant {dtype} d{d} per_token={per_token}", _quant_int8_kernel, signature, constexprs, 4, 1
        signature = {"Q8": "*i8", "K8": "*i8", "QScale": "*fp32", "KScale": "*fp32", "V": ptr, "Out": ptr,
                     "Lse": "*fp32", **{f"stride_{t}{x}": "i32" for t in "vo" for x in "bsh"},
                     "num_heads": "i32", "seq_q": "i32", "seq_k": "i32", "head_dim": "i32"}
        constexprs = {"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_D": d, "INTERPRET": False}
        yield f"sage attention {dtype} d{d}", _sage_attention_kernel, signature, constexprs, 4 if d <= 64 else 8, 2

AOT_SPECS = _aot_specs
