"""triton_kernels/sliding_tile_attention.py, interpreted, against the masked reference on small
grids that do not divide into tiles, with per-head windows and text tokens.

Tolerances: fp32 1e-5; fp16 by flash-attention's rule (at most twice plain torch's error with
the same mask against the fp32 reference).
"""

import pytest
import torch

pytest.importorskip("triton")

from sglang_diffusion.ops.sliding_tile_attention import (  # noqa: E402
    TileLayout, _head_windows, _plan, sliding_tile_attention_reference, sliding_tile_mask,
)
from sglang_diffusion.triton_kernels.sliding_tile_attention import sliding_tile_attention_fwd  # noqa: E402
from tests.ops.helpers import max_err, randn  # noqa: E402

CASES = [  # (grid, tile, windows per head, text tokens)
    ((3, 5, 7), (2, 2, 3), [(1, 2, 2), (2, 1, 3)], 0),
    ((2, 6, 5), (1, 4, 2), [(2, 1, 1), (1, 2, 3)], 5),
]


def run(grid, tile, windows, text_len, dtype, d=24):
    layout = TileLayout(grid, tile)
    shape = (1, layout.num_tokens + text_len, len(windows), d)
    q, k, v = randn(shape, 0, dtype=dtype), randn(shape, 1, dtype=dtype), randn(shape, 2, 1.0, 0.3, dtype=dtype)
    q_groups, kv_ranges = _plan(layout, _head_windows(layout, windows, len(windows)), text_len)
    out, lse = sliding_tile_attention_fwd(q, k, v, q_groups, kv_ranges, d ** -0.5)
    want, want_lse = sliding_tile_attention_reference(q.float(), k.float(), v.float(), layout, windows, text_len)
    return layout, (q, k, v), out, lse, want, want_lse


@pytest.mark.parametrize("grid, tile, windows, text_len", CASES)
def test_matches_the_masked_reference_fp32(grid, tile, windows, text_len):
    _, _, out, lse, want, want_lse = run(grid, tile, windows, text_len, torch.float32)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse, want_lse, atol=1e-5, rtol=1e-5)


def test_fp16_within_twice_torch_error():
    grid, tile, windows, text_len = CASES[1]
    layout, (q, k, v), out, lse, want, want_lse = run(grid, tile, windows, text_len, torch.float16)
    mask = sliding_tile_mask(layout, windows, len(windows), text_len)
    qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))
    p = torch.softmax(((qh @ kh.transpose(-1, -2)) * q.shape[-1] ** -0.5).masked_fill(~mask, float("-inf")), -1)
    torch_err = max_err((p @ vh).transpose(1, 2), want)
    assert out.dtype == torch.float16 and max_err(out, want) <= 2 * torch_err
    torch.testing.assert_close(lse, want_lse, atol=1e-3, rtol=1e-3)
