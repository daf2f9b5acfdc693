"""3D RoPE tables against diffusers' Wan tables, and the per-grid cache."""

import torch
from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

from sglang_diffusion.layers.rotary import RotaryEmbedding3D


def test_wan_tables_equal_diffusers_one_angle_per_pair():
    head_dim, grid = 40, (3, 5, 7)
    ref = WanRotaryPosEmbed(head_dim, (1, 2, 2), max_seq_len=64)
    cos_ref, sin_ref = ref(torch.zeros(1, 1, grid[0], grid[1] * 2, grid[2] * 2))  # [1, S, 1, D], pairs repeated
    cos, sin = RotaryEmbedding3D.for_head_dim(head_dim)(grid, torch.device("cpu"))
    assert cos.shape == (3 * 5 * 7, head_dim // 2) and cos.dtype == torch.float32
    torch.testing.assert_close(cos, cos_ref[0, :, 0, 0::2], rtol=0, atol=1e-6)
    torch.testing.assert_close(sin, sin_ref[0, :, 0, 1::2], rtol=0, atol=1e-6)


def test_tables_are_built_once_per_grid():
    rope = RotaryEmbedding3D.for_head_dim(16)
    a = rope((2, 3, 4), torch.device("cpu"))
    assert rope((2, 3, 4), torch.device("cpu"))[0] is a[0]
    assert rope((2, 3, 5), torch.device("cpu"))[0].shape == (30, 8)
