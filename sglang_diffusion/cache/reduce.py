"""Relative L1 distances that every rank of a sequence-parallel group computes alike."""

from __future__ import annotations

import torch
import torch.distributed as dist


def relative_l1(previous: torch.Tensor, current: torch.Tensor, shard=None, tokens: bool = False) -> float:
    """sum|previous - current| / sum|previous| over the whole tensor. Under sequence parallelism
    (`shard`, a `SequenceShard`) this rank's part is summed with the other ranks' of its SP group,
    so every rank gets the same number and takes the same decision from it; `tokens`: dim 1
    holds this rank's tokens, and the padding after the real ones is left out."""
    if shard is not None and tokens:
        previous, current = previous.narrow(1, 0, shard.num_valid), current.narrow(1, 0, shard.num_valid)
    sums = torch.stack([(previous - current).abs().sum(), previous.abs().sum()]).double()
    if shard is not None and shard.size > 1:
        dist.all_reduce(sums, op=dist.ReduceOp.SUM, group=shard.groups.sp.group)
    diff, norm = sums.tolist()
    return diff / norm if norm > 0 else float("inf")
