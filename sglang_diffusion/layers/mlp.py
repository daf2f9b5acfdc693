"""`FeedForward`: Linear -> activation -> Linear, as the DiTs' FFN and image projections use it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sglang_diffusion.ops.activation import gelu_tanh

ACTIVATIONS = {
    "gelu": F.gelu,
    # fc_in's output is not needed after the activation: the kernel may overwrite it.
    "gelu_tanh": lambda x: gelu_tanh(x, inplace=True),
    "silu": F.silu,
}


class FeedForward(nn.Module):
    def __init__(self, dim: int, inner_dim: int, dim_out: int | None = None, activation: str = "gelu_tanh"):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r} (valid: {', '.join(ACTIVATIONS)})")
        self.activation = activation
        self.fc_in = nn.Linear(dim, inner_dim)
        self.fc_out = nn.Linear(inner_dim, dim_out or dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(ACTIVATIONS[self.activation](self.fc_in(x)))
