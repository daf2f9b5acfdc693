"""Condition embeddings shared by DiTs: sinusoidal timestep features and the small MLPs that
project timesteps and text features to the model width."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def timestep_features(t: torch.Tensor, dim: int, flip_sin_to_cos: bool = True, downscale_freq_shift: float = 0.0,
                      max_period: float = 10000.0, scale: float = 1.0) -> torch.Tensor:
    """Sinusoidal features of timesteps t [N] -> [N, dim] fp32 (DDPM's embedding). `scale`
    multiplies the angles after t * freq, in diffusers' order (Qwen-Image feeds t / 1000 and
    scales by 1000: the other order rounds differently)."""
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device)
    freqs = torch.exp(exponent / (half - downscale_freq_shift))  # [half]
    angles = t[:, None].float() * freqs[None, :]  # [N, half]
    if scale != 1.0:
        angles = scale * angles
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class TimestepEmbedding(nn.Module):
    """linear_1 -> SiLU -> linear_2 (without biases in FLUX.2)."""

    def __init__(self, in_dim: int, dim: int, bias: bool = True):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim, bias=bias)
        self.linear_2 = nn.Linear(dim, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class TextProjection(nn.Module):
    """linear_1 -> GELU(tanh) -> linear_2: text-encoder features to the model width."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.gelu(self.linear_1(x), approximate="tanh"))
