"""SageAttention-style approximate attention: INT8 Q.K^T with K smoothing, 16-bit P.V.

Following SageAttention (Zhang et al., "SageAttention: Accurate 8-Bit Attention for
Plug-and-play Inference Acceleration", ICLR 2025), per (batch, head):

    1. K smoothing: k <- k - mean_j k[j]. Every score of a query row moves by the same
       q . mean(k), so softmax is unchanged, but K's channel-wise outliers are gone and it
       quantises far better. (The returned lse adds scale * q . mean(k) back: it is exact.)
    2. Q (pre-multiplied by the softmax scale) and K quantised to INT8 symmetric, one scale per
       block of ``block_q`` / ``block_k`` tokens (``qk_quant_gran="per_block"``), or per token
       (``"per_token"``): x8 = round(x / s) (half away from zero), s = max|x| / 127.
    3. S = (q8 . k8) * s_q * s_k, exact integer dot products (int32 on a GPU; fp32 here holds
       them exactly while |sum| < 2^24, i.e. D <= 1040).
    4. Online softmax in fp32; P rounded to 16 bits (V's dtype when it is fp16/bf16, else
       fp16) and multiplied with V in that dtype, accumulated in fp32.

Shapes as ops.attention: q [B, Sq, H, D], k, v [B, Sk, H, D] -> out [B, Sq, H, D] (q's dtype),
lse [B, H, Sq] float32.

Error bound (tests/ops/test_sage_attention.py): on Gaussian inputs with a channel offset in K,
cosine similarity to exact attention >= 0.999 and relative L2 error <= 2e-2.

- ``sage_attention_reference``: plain torch, the spec; chunked over query blocks, so it doubles
  as the path that runs anywhere (it is slower than exact attention: it only emulates the
  quantisation).
- ``sage_attention``: triton (triton_kernels/sage_attention.py, CUDA) or torch.
"""

from __future__ import annotations

from typing import Optional

import torch

from sglang_diffusion.ops import _dispatch
from sglang_diffusion.ops.attention import _check, default_scale, empty_outputs

QK_QUANT_GRANS = ("per_block", "per_token")
_CHUNK_SCORES = 1 << 26  # fp32 scores held at once by the torch path (256 MiB)


def _check_quant_gran(qk_quant_gran: str) -> None:
    if qk_quant_gran not in QK_QUANT_GRANS:
        raise ValueError(f"qk_quant_gran must be one of {QK_QUANT_GRANS}, got {qk_quant_gran!r}")


def pv_dtype_for(dtype: torch.dtype) -> torch.dtype:
    """The 16-bit dtype of P and V in step 4."""
    return dtype if dtype in (torch.float16, torch.bfloat16) else torch.float16


def quantize_int8(x: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x [B, H, S, D] fp32 -> (x8 [B, H, S, D] int8 values held in fp32, scale [B, H, S] fp32),
    one scale per ``block`` consecutive tokens (block 1: per token), broadcast back per token."""
    b, h, s, d = x.shape
    nblk = -(-s // block)
    pad = nblk * block - s
    xp = torch.nn.functional.pad(x, (0, 0, 0, pad)) if pad else x  # [B, H, nblk*block, D]
    amax = xp.reshape(b, h, nblk, block * d).abs().amax(dim=-1)  # [B, H, nblk]
    scale = (amax / 127.0).clamp_min(1e-30)  # an all-zero block: any scale, its values are 0
    scale_tok = scale.repeat_interleave(block, dim=-1)[..., :s]  # [B, H, S]
    xs = x / scale_tok[..., None]
    x8 = (torch.sign(xs) * torch.floor(xs.abs() + 0.5)).clamp_(-127, 127)  # half away from zero, as Sage
    return x8, scale_tok


def sage_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: Optional[float] = None,
                             qk_quant_gran: str = "per_block", block_q: int = 128, block_k: int = 64,
                             smooth_k: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(out [B, Sq, H, D] in q's dtype, lse [B, H, Sq] float32) of the quantised attention."""
    _check(q, k, v)
    _check_quant_gran(qk_quant_gran)
    if block_q < 1 or block_k < 1:
        raise ValueError(f"block_q and block_k must be >= 1, got {block_q}, {block_k}")
    if qk_quant_gran == "per_token":
        block_q = block_k = 1
    scale = default_scale(q.shape[-1]) if scale is None else scale
    b, sq, h, d = q.shape
    sk = k.shape[1]
    pv_dtype = pv_dtype_for(v.dtype)
    kf = k.float().transpose(1, 2)  # [B, H, Sk, D]
    k_mean = kf.mean(dim=2, keepdim=True) if smooth_k else torch.zeros_like(kf[:, :, :1])  # [B, H, 1, D]
    k8, k_scale = quantize_int8(kf - k_mean, block_k)  # [B, H, Sk, D], [B, H, Sk]
    vl = v.transpose(1, 2).to(pv_dtype)  # [B, H, Sk, D]
    out, lse = empty_outputs(q)
    # Chunks of whole quantisation blocks, so each block's scale is computed over the block.
    chunk = max(1, _CHUNK_SCORES // max(1, b * h * sk) // block_q) * block_q
    for start in range(0, sq, chunk):
        end = min(sq, start + chunk)
        qf = q[:, start:end].float().transpose(1, 2) * scale  # [B, H, c, D]
        q8, q_scale = quantize_int8(qf, block_q)
        s = (q8 @ k8.transpose(-1, -2)) * q_scale[..., None] * k_scale[:, :, None, :]  # [B, H, c, Sk]
        m = s.amax(dim=-1, keepdim=True)  # [B, H, c, 1]
        p = torch.exp(s - m)
        l = p.sum(dim=-1)  # [B, H, c]
        o = (p.to(pv_dtype) @ vl).float() / l[..., None]  # [B, H, c, D]
        out[:, start:end] = o.transpose(1, 2).to(q.dtype)
        # The smoothing shifted every score of a row by -q.mean(k): add it back to the lse.
        shift = (qf @ k_mean.transpose(-1, -2))[..., 0]  # [B, H, c]
        lse[:, :, start:end] = m[..., 0] + torch.log(l) + shift
    return out, lse


def _why_not(q: torch.Tensor) -> dict[str, Optional[str]]:
    triton = _dispatch.triton_why_not(q.device)
    if triton is None and q.dtype not in (torch.float16, torch.bfloat16):
        triton = f"q is {q.dtype}; the Triton kernel takes float16 or bfloat16"
    if triton is None and q.shape[-1] > 256:
        triton = f"head dim {q.shape[-1]} > 256"
    return {"triton": triton}


@_dispatch.custom_op("sglang_diffusion::sage_attention", mutates_args=())
def _sage_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, qk_quant_gran: str,
                       block_q: int, block_k: int, smooth_k: bool,
                       impl: Optional[str]) -> tuple[torch.Tensor, torch.Tensor]:
    _check(q, k, v)
    chosen = _dispatch.choose("sage_attention", impl, _why_not(q), f"{q.device.type} {q.dtype}")
    if chosen == "triton":
        from sglang_diffusion.triton_kernels.sage_attention import sage_attention_fwd

        return sage_attention_fwd(q, k, v, scale, qk_quant_gran, block_q, block_k, smooth_k)
    return sage_attention_reference(q, k, v, scale, qk_quant_gran, block_q, block_k, smooth_k)


@_sage_attention_op.register_fake
def _(q, k, v, scale, qk_quant_gran, block_q, block_k, smooth_k, impl):
    return empty_outputs(q)


def sage_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: Optional[float] = None,
                   qk_quant_gran: str = "per_block", block_q: int = 128, block_k: int = 64,
                   smooth_k: bool = True, impl: Optional[str] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantised attention (see the module doc); same shapes as ops.attention.attention."""
    _check(q, k, v)
    _check_quant_gran(qk_quant_gran)
    scale = default_scale(q.shape[-1]) if scale is None else float(scale)
    return _sage_attention_op(q, k, v, scale, qk_quant_gran, int(block_q), int(block_k), bool(smooth_k), impl)
