"""Tensor-parallel layers (Megatron-style), built from a loaded layer by keeping this rank's slice.

    ColumnParallelLinear   y_r = x W_r^T (+ b_r)          W_r: rows (output features) of rank r
    RowParallelLinear      y   = sum_r x_r W_r^T (+ b)    W_r: columns (input features) of rank r;
                                                          the sum is one all-reduce over the group
    VocabParallelEmbedding e   = sum_r E_r[ids]           E_r: rows (token ids) of rank r; ids
                                                          outside them give exact zeros

A column-parallel layer followed by a row-parallel one (attention: q/k/v then o; an MLP: in then
out) needs one all-reduce per pair. Groups are `distributed.parallel_state.RankGroup`s.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def _part(n: int, group, what: str) -> slice:
    if n % group.size:
        raise ValueError(f"{what} ({n}) is not divisible by the tensor-parallel size {group.size}")
    size = n // group.size
    return slice(group.rank * size, (group.rank + 1) * size)


def _all_reduce(x: torch.Tensor, group) -> torch.Tensor:
    if group.size > 1:
        dist.all_reduce(x, group=group.group)
    return x


class ColumnParallelLinear(nn.Module):
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, group):
        super().__init__()
        self.group = group
        self.weight = nn.Parameter(weight, requires_grad=False)  # [out / tp, in]
        self.bias = nn.Parameter(bias, requires_grad=False) if bias is not None else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, group) -> ColumnParallelLinear:
        rows = _part(linear.out_features, group, f"{linear.out_features} output features")
        bias = linear.bias.data[rows].clone() if linear.bias is not None else None
        return cls(linear.weight.data[rows].clone(), bias, group)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)  # [..., out / tp]

    def extra_repr(self) -> str:
        return f"in={self.weight.shape[1]}, out={self.weight.shape[0]} of {self.weight.shape[0] * self.group.size}"


class RowParallelLinear(nn.Module):
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, group):
        super().__init__()
        self.group = group
        self.weight = nn.Parameter(weight, requires_grad=False)  # [out, in / tp]
        self.bias = nn.Parameter(bias, requires_grad=False) if bias is not None else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, group) -> RowParallelLinear:
        cols = _part(linear.in_features, group, f"{linear.in_features} input features")
        bias = linear.bias.data.clone() if linear.bias is not None else None
        return cls(linear.weight.data[:, cols].contiguous(), bias, group)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x [..., in / tp] -> [..., out]; the bias is added once, after the sum
        y = _all_reduce(F.linear(x, self.weight), self.group)
        return y + self.bias if self.bias is not None else y

    def extra_repr(self) -> str:
        return f"in={self.weight.shape[1]} of {self.weight.shape[1] * self.group.size}, out={self.weight.shape[0]}"


class VocabParallelEmbedding(nn.Module):
    def __init__(self, weight: torch.Tensor, start: int, num_embeddings: int, group):
        super().__init__()
        self.group, self.start, self.num_embeddings = group, start, num_embeddings
        self.weight = nn.Parameter(weight, requires_grad=False)  # [vocab / tp (last: the rest), dim]

    @classmethod
    def from_embedding(cls, embedding: nn.Embedding, group) -> VocabParallelEmbedding:
        # vocabularies rarely divide evenly: ceil-sized parts, the last one shorter
        n = embedding.num_embeddings
        size = -(-n // group.size)
        start, stop = min(n, group.rank * size), min(n, (group.rank + 1) * size)
        return cls(embedding.weight.data[start:stop].clone(), start, n, group)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        local = ids - self.start
        outside = (local < 0) | (local >= self.weight.shape[0])
        out = F.embedding(local.masked_fill(outside, 0), self.weight)  # [..., dim]
        out = out.masked_fill(outside.unsqueeze(-1), 0)
        return _all_reduce(out, self.group)  # exact: one rank gives each row, the others zeros

    def extra_repr(self) -> str:
        return f"ids [{self.start}, {self.start + self.weight.shape[0]}) of {self.num_embeddings}, " \
               f"dim={self.weight.shape[1]}"
