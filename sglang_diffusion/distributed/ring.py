"""Ring attention: each rank holds a block of queries and a block of keys/values; the K/V blocks
travel round the ring, and each rank merges its partial results by their log-sum-exp.

With R ranks, at step i rank r holds the K/V block of rank (r - i) mod R. Before attending to it,
it posts the send of that block to rank r + 1 and the receive of the next one from rank r - 1
(`torch.distributed.batch_isend_irecv`, public API), so the transfer overlaps the attention on
the block in hand; K and V travel as one buffer, one message per step.

Merging (all in fp32): for partial results (o_i, lse_i) over disjoint key sets,

    lse = log(sum_i exp(lse_i))        o = sum_i exp(lse_i - lse) * o_i

done incrementally, two at a time, with `logaddexp` (no exp of a large number ever forms).

Padding: when the token count does not divide the ranks, the last blocks end in padding.
`kv_valid[j]` is how many leading keys of rank j's block are real; the attention on that block
reads only those (a block with none is skipped), which masks the padding out exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist

from sglang_diffusion.distributed.parallel_state import RankGroup

# (q [B, Sq, H, D], k [B, Sk, H, D], v [B, Sk, H, D]) -> (out [B, Sq, H, D], lse [B, H, Sq] fp32)
AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def merge_partials(out: torch.Tensor | None, lse: torch.Tensor | None, block_out: torch.Tensor,
                   block_lse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold one block's (out [B, Sq, H, D], lse [B, H, Sq]) into the running fp32 result."""
    block_out, block_lse = block_out.float(), block_lse.float()
    if out is None:
        return block_out, block_lse
    new_lse = torch.logaddexp(lse, block_lse)  # [B, H, Sq]
    # weights as [B, Sq, H, 1] to scale the [B, Sq, H, D] outputs
    old_w = torch.exp(lse - new_lse).transpose(1, 2).unsqueeze(-1)
    new_w = torch.exp(block_lse - new_lse).transpose(1, 2).unsqueeze(-1)
    return out * old_w + block_out * new_w, new_lse


def ring_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn: AttentionFn, group: RankGroup,
                   kv_valid: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of this rank's queries q [B, Sq, H, D] over the keys/values of every rank of
    `group` (this rank's block: k, v [B, Sk, H, D], the same Sk on every rank). `attn` computes
    one block with its LSE. `kv_valid[j]`: real keys in rank j's block (default: all).

    Returns (out [B, Sq, H, D] in q's dtype, lse [B, H, Sq] fp32)."""
    size, me = group.size, group.rank
    kv_valid = list(kv_valid) if kv_valid is not None else [k.shape[1]] * size
    assert len(kv_valid) == size and any(kv_valid), f"kv_valid {kv_valid} for a ring of {size}"
    kv = torch.stack((k, v))  # [2, B, Sk, H, D]: one message per step
    spare = torch.empty_like(kv) if size > 1 else None
    nxt, prev = group.ranks[(me + 1) % size], group.ranks[(me - 1) % size]
    out = lse = None
    for step in range(size):
        pending = []
        if step < size - 1:
            ops = [dist.P2POp(dist.isend, kv, nxt, group.group), dist.P2POp(dist.irecv, spare, prev, group.group)]
            pending = dist.batch_isend_irecv(ops)
        valid = kv_valid[(me - step) % size]
        if valid:
            # views into the block: only the D dim must be contiguous for the kernels
            block_out, block_lse = attn(q, kv[0, :, :valid], kv[1, :, :valid])
            out, lse = merge_partials(out, lse, block_out, block_lse)
        for work in pending:
            work.wait()
        if pending:
            kv, spare = spare, kv
    return out.to(q.dtype), lse
