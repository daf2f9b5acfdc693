"""Sliding tile attention forward with the log-sum-exp, in the [B, S, H, D] layout
(ops/sliding_tile_attention.py has the layout and the key runs).

FlashAttention-2 as in attention.py (its ``_load_queries``, ``_key_block``, ``_store_rows``), but each
program, one (block of BLOCK_M queries of one query group, batch * head), loops only over its
group's key runs [start, end) (``kv_ranges``): keys outside the window are never loaded, so
the work is the window's. Query blocks never straddle two groups (a group is a tile of the
grid, or the text tokens): ``sliding_tile_attention_fwd`` cuts each group into blocks.
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from sglang_diffusion.triton_kernels._common import TL_DTYPES, interpreting, next_pow2
from sglang_diffusion.triton_kernels.attention import _blocks, _key_block, _load_queries, _store_rows


@triton.jit
def _sliding_tile_fwd_kernel(
    Q, K, V, Out, Lse, QBlocks, Ranges,
    qk_scale,  # softmax scale * log2(e)
    stride_qb, stride_qs, stride_qh,
    stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh,
    stride_ob, stride_os, stride_oh,
    num_heads, seq_q, head_dim, num_groups, num_runs,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr, IEEE: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // num_heads
    h = pid_bh % num_heads
    q_start = tl.load(QBlocks + 3 * pid_m)
    q_end = tl.load(QBlocks + 3 * pid_m + 1)
    group = tl.load(QBlocks + 3 * pid_m + 2)
    offs_m = q_start + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < q_end
    mask_d = offs_d < head_dim

    q = _load_queries(Q + b * stride_qb + h * stride_qh, stride_qs, offs_m, mask_m, offs_d, mask_d, UPCAST)
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    runs = Ranges + (h * num_groups + group) * num_runs * 2
    for r in range(0, num_runs):
        lo = tl.load(runs + 2 * r)
        hi = tl.load(runs + 2 * r + 1)
        for start_n in range(lo, hi, BLOCK_N):  # only the window's keys
            m_i, l_i, acc = _key_block(q, k_base, v_base, stride_ks, stride_vs, start_n, hi, offs_n, offs_d, mask_d,
                                       m_i, l_i, acc, qk_scale, UPCAST, IEEE)

    _store_rows(Out + b * stride_ob + h * stride_oh, stride_os, Lse + pid_bh * seq_q, offs_m, mask_m, offs_d, mask_d,
                m_i, l_i, acc)


@functools.lru_cache(maxsize=64)
def query_blocks(groups: tuple[tuple[int, int], ...], block_m: int, device: torch.device) -> torch.Tensor:
    """Query groups ((start, end), ...) -> [NB, 3] int32 (start, end, group) on ``device``: each
    group in blocks of block_m; made once per layout."""
    blocks = []
    for g, (start, end) in enumerate(groups):
        blocks += [(lo, min(end, lo + block_m), g) for lo in range(start, end, block_m)]
    return torch.tensor(blocks, dtype=torch.int32, device=device)


def sliding_tile_attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_groups: torch.Tensor,
                               kv_ranges: torch.Tensor, scale: float, block_m: int | None = None,
                               block_n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k, v [B, S, H, D] (D contiguous), q_groups [G, 2] (on the CPU), kv_ranges [H, G, R, 2] ->
    (out [B, S, H, D], lse [B, H, S] fp32)."""
    b, sq, h, d = q.shape
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    out = torch.empty(b, sq, h, d, dtype=q.dtype, device=q.device)
    lse = torch.empty(b, h, sq, dtype=torch.float32, device=q.device)
    bm, bn, warps, stages = _blocks(d)
    bm, bn = block_m or bm, block_n or bn
    blocks = query_blocks(tuple(map(tuple, q_groups.tolist())), bm, q.device)  # q_groups: a CPU tensor
    ranges = kv_ranges.to(device=q.device, dtype=torch.int32).contiguous()
    grid = (blocks.shape[0], b * h)
    _sliding_tile_fwd_kernel[grid](
        q, k, v, out, lse, blocks, ranges, scale * math.log2(math.e),
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3],
        h, sq, d, kv_ranges.shape[1], kv_ranges.shape[2],
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=next_pow2(d, 16),
        UPCAST=interpreting() and q.dtype != torch.float32, IEEE=q.dtype == torch.float32,
        num_warps=warps, num_stages=stages,
    )
    return out, lse


def _aot_specs():
    """The launcher's GPU builds: each dtype once, both block configurations covered."""
    for dtype, d in (("float16", 128), ("bfloat16", 64), ("bfloat16", 128), ("float32", 128)):
        bm, bn, warps, stages = (128, 64, 4, 3) if d <= 64 else (128, 64, 8, 2)
        ptr = "*" + TL_DTYPES[dtype]
        signature = {"Q": ptr, "K": ptr, "V": ptr, "Out": ptr, "Lse": "*fp32", "QBlocks": "*i32", "Ranges": "*i32",
                     "qk_scale": "fp32", **{f"stride_{t}{x}": "i32" for t in "qkvo" for x in "bsh"},
                     "num_heads": "i32", "seq_q": "i32", "head_dim": "i32", "num_groups": "i32", "num_runs": "i32"}
        constexprs = {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_D": d, "UPCAST": False, "IEEE": dtype == "float32"}
        yield f"sliding_tile_attention {dtype} d{d}", _sliding_tile_fwd_kernel, signature, constexprs, warps, stages


AOT_SPECS = _aot_specs
