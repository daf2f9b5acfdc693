"""Rotary position tables: one angle per rotated pair, cos and sin [S, D/2] in fp32, as
`ops.rope.apply_rope` takes them.

`RotaryEmbedding3D` splits a head's pairs between the frame, height and width axes of a video
token grid (Wan, HunyuanVideo) and keeps the tables of the grids it has seen, per device, so a
request builds them once, not once per step and layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sglang_diffusion.ops.rope import rope_cos_sin_3d


class RotaryEmbedding3D:
    def __init__(self, axes_dims: Sequence[int], theta: float = 10000.0, max_cached: int = 8):
        if any(d % 2 for d in axes_dims):
            raise ValueError(f"rotary axes dims must be even, got {tuple(axes_dims)}")
        self.axes_dims, self.theta, self.max_cached = tuple(axes_dims), theta, max_cached
        self._tables: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def for_head_dim(cls, head_dim: int, theta: float = 10000.0) -> RotaryEmbedding3D:
        """Wan's split: height and width get 2 * (D // 6) channels each, frames the rest."""
        hw = 2 * (head_dim // 6)
        return cls((head_dim - 2 * hw, hw, hw), theta)

    def __call__(self, grid: Sequence[int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin) [F*H*W, D/2] float32 for a (frames, height, width) token grid, row-major."""
        key = (tuple(grid), torch.device(device))
        tables = self._tables.get(key)
        if tables is None:
            if len(self._tables) >= self.max_cached:
                self._tables.pop(next(iter(self._tables)))
            cos, sin = rope_cos_sin_3d(grid, self.axes_dims, self.theta)  # built on the CPU in fp64
            tables = self._tables[key] = (cos.to(device), sin.to(device))
        return tables
