"""Ulysses (DeepSpeed-Ulysses) sequence parallelism: around attention, one all-to-all trades
sequence shards for head shards and one trades them back.

    q, k, v [B, s, H, D] per rank (s = S / U tokens, all heads)
        -> all-to-all -> [B, S, H / U, D] (all tokens, H / U heads) -> attention
        -> all-to-all -> out [B, s, H, D]

q, k and v go in one all-to-all: the send buffer [U, B, s, 3, H/U, D] is written in one pass
(chunk p: rank p's heads of q, k and v), and what arrives, viewed as [U, B, s, 3H/U, D], is put
back in token order by `ops.all_to_all.seq_to_head_recv` (a view when B == 1); q, k and v are
then strided views of it (the attention kernels need only D contiguous). The way back uses the
fused layout ops of `ops.all_to_all`. The heads must divide by U (`resolve_layout` refuses
layouts where they do not).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist

from sglang_diffusion.distributed.parallel_state import RankGroup
from sglang_diffusion.ops.all_to_all import head_to_seq_recv, head_to_seq_send, seq_to_head_recv


def _all_to_all(send: torch.Tensor, group: RankGroup) -> torch.Tensor:
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group.group)
    return recv


def qkv_to_head_shards(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, group: RankGroup
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v [B, s, H, D] (this rank's tokens) -> [B, U*s, H/U, D] each (this rank's heads)."""
    u = group.size
    b, s, h, d = q.shape
    if h % u:
        raise ValueError(f"num_heads {h} is not divisible by the Ulysses degree {u}")
    hu = h // u
    # [U, B, s, 3, H/U, D], in one pass: chunk p holds rank p's heads of q, k and v
    send = torch.stack([t.view(b, s, u, hu, d).permute(2, 0, 1, 3, 4) for t in (q, k, v)], dim=3)
    recv = _all_to_all(send, group).view(u, b, s, 3 * hu, d)  # chunk p: rank p's tokens
    qkv = seq_to_head_recv(recv, u).view(b, u * s, 3, hu, d)  # [B, U*s, 3, H/U, D]
    return qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]


def out_to_seq_shards(out: torch.Tensor, group: RankGroup) -> torch.Tensor:
    """out [B, U*s, H/U, D] (this rank's heads) -> [B, s, H, D] (this rank's tokens)."""
    u = group.size
    return head_to_seq_recv(_all_to_all(head_to_seq_send(out, u).contiguous(), group), u)


def ulysses_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      attn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
                      group: RankGroup) -> torch.Tensor:
    """q, k, v [B, s, H, D] per rank -> attention over all U*s tokens, [B, s, H, D] per rank.
    `attn(q, k, v)` runs on the head shards [B, U*s, H/U, D]."""
    if group.size == 1:
        return attn(q, k, v)
    qh, kh, vh = qkv_to_head_shards(q, k, v, group)
    return out_to_seq_shards(attn(qh, kh, vh), group)
