"""`Attention`: scaled dot-product attention through the selected backend, [B, S, H, D] in and out.

The module owns no weights: a model's attention blocks hold their projections (named as the
checkpoint names them) and call this for the score/softmax/value part, so that the backend
(`--attention-backend`) and sequence parallelism live in one place: given `seq` (a
`distributed.sharding.SequenceShard`), q, k and v are this rank's shard of the tokens and the
attention runs over the whole sequence (Ulysses all-to-all, ring, or both), padding masked out.
The backend is chosen once per model (`set_backend`); a module used without one picks the
platform default for its inputs on first use.
"""

from __future__ import annotations

import torch
from torch import nn


class Attention(nn.Module):
    def __init__(self, num_heads: int, head_dim: int):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, head_dim
        self.backend = None  # an attention.backends AttentionBackend

    def set_backend(self, backend) -> None:
        self.backend = backend

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, head_dim={self.head_dim}, backend={self.backend!r}"

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seq=None) -> torch.Tensor:
        # q [B, Sq, H, D]; k, v [B, Sk, H, D] -> [B, Sq, H, D]
        if self.backend is None:
            from sglang_diffusion.attention.selector import select_attention_backend

            self.backend = select_attention_backend("auto", device=q.device, dtype=q.dtype, head_dim=self.head_dim)
        if seq is not None:  # self-attention over a sequence split across the SP ranks
            return seq.attention(q, k, v, self.backend)
        out, _ = self.backend.forward(q, k, v)
        return out
