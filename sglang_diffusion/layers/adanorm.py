"""`AdaNorm`: LayerNorm or RMSNorm over the last dim, fused with adaLN modulation and with the
gated residual add before it (`ops.norm`), optionally with its own affine weight and bias.

    forward(x, scale, shift)                   -> norm(x) * (1 + scale) + shift
    residual(residual, x, gate, scale, shift)  -> (residual + gate * x, norm(that) * (1 + scale) + shift)

scale / shift / gate broadcast to x [B, S, D]: [D], [B, 1, D] or [B, S, D]. None for scale and
shift means no modulation, None for gate means 1. Math is fp32, outputs in x's dtype.
"""

from __future__ import annotations

import torch
from torch import nn

from sglang_diffusion.ops.norm import gated_residual_norm_modulate, norm_modulate


class AdaNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6, elementwise_affine: bool = False, norm_type: str = "layer"):
        super().__init__()
        self.dim, self.eps, self.norm_type = dim, eps, norm_type
        self.weight = nn.Parameter(torch.ones(dim)) if elementwise_affine else None
        self.bias = nn.Parameter(torch.zeros(dim)) if elementwise_affine and norm_type == "layer" else None

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}, norm_type={self.norm_type}, affine={self.weight is not None}"

    def _zero(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(self.dim, dtype=torch.float32)

    def forward(self, x: torch.Tensor, scale: torch.Tensor | None = None,
                shift: torch.Tensor | None = None) -> torch.Tensor:
        scale = self._zero(x) if scale is None else scale
        shift = self._zero(x) if shift is None else shift
        return norm_modulate(x, scale, shift, self.weight, self.bias, self.eps, self.norm_type)

    def residual(self, residual: torch.Tensor, x: torch.Tensor, gate: torch.Tensor | None,
                 scale: torch.Tensor | None = None, shift: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        scale = self._zero(residual) if scale is None else scale
        shift = self._zero(residual) if shift is None else shift
        return gated_residual_norm_modulate(residual, x, gate, scale, shift, self.weight, self.bias, self.eps,
                                            self.norm_type)
