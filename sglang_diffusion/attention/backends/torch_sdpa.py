"""``torch_sdpa``: torch.nn.functional.scaled_dot_product_attention, exact, on any device. It
returns no log-sum-exp (SDPA's public API has none)."""

from __future__ import annotations

from typing import Optional

import torch.nn.functional as F

from sglang_diffusion.attention.backends.base import AttentionBackend


class TorchSdpaBackend(AttentionBackend):
    name = "torch_sdpa"
    exact = True

    @property
    def returns_lse(self) -> bool:
        return False

    def forward(self, q, k, v, scale: Optional[float] = None):
        # SDPA wants [B, H, S, D]; the transposes are views.
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=scale)
        return out.transpose(1, 2), None  # [B, Sq, H, D]
