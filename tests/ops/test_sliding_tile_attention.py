"""sglang_diffusion.ops.sliding_tile_attention: the tiled layout, the masked reference, and the
native (C++) and torch kernels against it; the Triton kernel under the interpreter.

Tolerances: fp32 1e-5 (outputs and lse); bf16 by flash-attention's rule (at most twice the error
of plain torch in bf16 with the same mask).
"""

import itertools
import math

import pytest
import torch

from sglang_diffusion.ops.attention import attention_reference
from sglang_diffusion.ops.sliding_tile_attention import (
    TileLayout, computed_fraction, sliding_tile_attention, sliding_tile_attention_reference, sliding_tile_mask,
)
from tests.ops.helpers import max_err, native_ops, poisoned_like, randn
from sglang_diffusion.ops import _dispatch

requires_native = pytest.mark.skipif(
    _dispatch.native_why_not(torch.device("cpu"), "sliding_tile_attention_out") is not None,
    reason=str(_dispatch.native_why_not(torch.device("cpu"), "sliding_tile_attention_out")),
)

# (grid, tile): one that divides, and ones whose borders leave partial tiles on every axis
LAYOUTS = [((4, 8, 8), (2, 4, 4)), ((3, 5, 7), (2, 2, 3)), ((5, 6, 9), (3, 4, 4))]


def make_qkv(layout, heads, dim, text_len=0, batch=1, seed=0, dtype=torch.float32):
    shape = (batch, layout.num_tokens + text_len, heads, dim)  # [B, S', H, D]
    return randn(shape, seed, dtype=dtype), randn(shape, seed + 1, dtype=dtype), randn(shape, seed + 2, 1.0, 0.3, dtype=dtype)


def random_windows(layout, heads, seed):
    gen = torch.Generator().manual_seed(seed)
    return [tuple(int(torch.randint(1, n + 1, (), generator=gen)) for n in layout.tiles) for _ in range(heads)]


# ---- the layout -----------------------------------------------------------------------------


@pytest.mark.parametrize("grid, tile", LAYOUTS)
def test_reorder_groups_each_tile_and_restores(grid, tile):
    layout = TileLayout(grid, tile)
    assert layout.tiles == tuple(math.ceil(g / t) for g, t in zip(grid, tile))
    coords = torch.stack(torch.meshgrid(*(torch.arange(g) for g in grid), indexing="ij"), -1).view(-1, 3)
    tiled = layout.reorder(coords, 0)  # [S, 3]: each tiled position's (t, h, w)
    bounds = layout.tile_bounds.tolist()
    assert bounds[0] == 0 and bounds[-1] == layout.num_tokens  # the padding is not materialised
    for g, (a, b, c) in enumerate(itertools.product(*(range(n) for n in layout.tiles))):
        inside = tiled[bounds[g]:bounds[g + 1]] // torch.tensor(tile)
        assert inside.tolist() == [[a, b, c]] * (bounds[g + 1] - bounds[g])  # tile g, row-major tile order
    x = randn((2, layout.num_tokens, 3), 0)
    torch.testing.assert_close(layout.restore(layout.reorder(x, 1), 1), x, atol=0, rtol=0)


def test_mask_follows_fastvideos_clamped_window():
    """FastVideo's STA mask: the window's centre is clamped half a window from the border."""
    layout = TileLayout((6, 4, 10), (2, 2, 2))  # 3 x 2 x 5 tiles
    win = (3, 1, 3)
    mask = sliding_tile_mask(layout, win, heads=1)[0]
    coords = layout.token_tile_coords()
    for q in range(0, layout.num_tokens, 7):
        centre = [min(max(int(c), w // 2), n - 1 - w // 2) for c, w, n in zip(coords[q], win, layout.tiles)]
        want = torch.ones(layout.num_tokens, dtype=torch.bool)
        for axis in range(3):
            want &= (coords[:, axis] - centre[axis]).abs() <= win[axis] // 2
        assert torch.equal(mask[q], want)


def test_computed_fraction_counts_the_window():
    layout = TileLayout((12, 24, 40), (6, 6, 10))  # 2 x 4 x 4 tiles of 360 tokens
    assert computed_fraction(layout, (2, 4, 4), 2) == 1.0
    assert computed_fraction(layout, (1, 2, 4), 2) == pytest.approx(1 / 4)
    assert computed_fraction(layout, (9, 9, 9), 1) == 1.0  # a window wider than the grid covers it


# ---- the kernels against the reference --------------------------------------------------------


def kernels():
    impls = [pytest.param("torch", id="torch")]
    impls.append(pytest.param("native", id="native", marks=requires_native))
    return impls


@pytest.mark.parametrize("impl", kernels())
@pytest.mark.parametrize("text_len", [0, 5])
def test_full_window_equals_dense_attention(impl, text_len):
    layout = TileLayout((3, 5, 7), (2, 2, 3))
    q, k, v = make_qkv(layout, 2, 32, text_len, batch=2)
    out, lse = sliding_tile_attention(q, k, v, layout, layout.tiles, text_len, backend=impl)
    dense, dense_lse = attention_reference(q, k, v)
    assert max_err(out, dense) <= 1e-5 * dense.abs().max().item()
    torch.testing.assert_close(lse, dense_lse, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("impl", kernels())
@pytest.mark.parametrize("grid, tile", LAYOUTS)
@pytest.mark.parametrize("text_len", [0, 6])
def test_random_windows_match_the_masked_reference_fp32(impl, grid, tile, text_len):
    layout = TileLayout(grid, tile)
    heads = 3
    windows = random_windows(layout, heads, seed=sum(grid) + text_len)
    q, k, v = make_qkv(layout, heads, 40, text_len, batch=2, seed=3)
    scale = 0.6 / 40 ** 0.5
    out, lse = sliding_tile_attention(q, k, v, layout, windows, text_len, scale, backend=impl)
    expected, expected_lse = sliding_tile_attention_reference(q, k, v, layout, windows, text_len, scale)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse, expected_lse, atol=1e-5, rtol=1e-5)


def masked_attention_in_dtype(q, k, v, mask):
    """Plain torch in the inputs' dtype with the same mask: the tolerance rule's baseline."""
    qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, S, D]
    s = (qh @ kh.transpose(-1, -2)) * q.shape[-1] ** -0.5
    p = torch.softmax(s.masked_fill(~mask, float("-inf")), dim=-1)
    return (p @ vh).transpose(1, 2)


@requires_native
@pytest.mark.parametrize("grid, tile", LAYOUTS[1:])
def test_native_bf16_within_twice_torch_error(grid, tile):
    layout = TileLayout(grid, tile)
    windows = random_windows(layout, 2, seed=7)
    q, k, v = make_qkv(layout, 2, 64, 4, seed=5, dtype=torch.bfloat16)
    out, lse = sliding_tile_attention(q, k, v, layout, windows, 4, backend="native")
    assert out.dtype == torch.bfloat16 and not out.isnan().any()
    expected, expected_lse = sliding_tile_attention_reference(q.float(), k.float(), v.float(), layout, windows, 4)
    mask = sliding_tile_mask(layout, windows, 2, 4)
    assert max_err(out, expected) <= 2 * max_err(masked_attention_in_dtype(q, k, v, mask), expected)
    torch.testing.assert_close(lse, expected_lse, atol=1e-4, rtol=1e-5)  # fp32 math on the same inputs


@requires_native
def test_native_writes_every_element_and_reads_strided_views():
    layout = TileLayout((5, 6, 9), (3, 4, 4))
    qkv = randn((1, layout.num_tokens, 3, 2, 24), 9)  # [B, S, 3, H, D]: strided views
    q, k, v = qkv.unbind(2)
    from sglang_diffusion.ops.sliding_tile_attention import _plan, _head_windows

    windows = _head_windows(layout, [(1, 2, 1), (2, 1, 3)], 2)
    q_groups, kv_ranges = _plan(layout, windows, 0)
    out, lse = poisoned_like(q.contiguous()), torch.full((1, 2, layout.num_tokens), float("nan"))
    native_ops().sliding_tile_attention_out(out, lse, q, k, v, q_groups, kv_ranges, 24 ** -0.5)
    expected, expected_lse = sliding_tile_attention_reference(q, k, v, layout, windows)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse, expected_lse, atol=1e-5, rtol=1e-5)


@requires_native
@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: a.update(kv_ranges=a["kv_ranges"].int()), "contiguous int64"),
        (lambda a: a.update(kv_ranges=a["kv_ranges"][:1]), r"kv_ranges must be \[H, G, R, 2\]"),
        (lambda a: a["kv_ranges"].__setitem__((0, 0, 0, 1), 10_000), r"key run \[0, 10000\) is not inside"),
        (lambda a: a["q_groups"].__setitem__((0, 1), -1), "query group 0"),
    ],
)
def test_native_rejects_bad_runs_with_its_message(change, message):
    layout = TileLayout((2, 4, 4), (1, 2, 2))
    q, k, v = make_qkv(layout, 2, 16)
    from sglang_diffusion.ops.sliding_tile_attention import _plan

    q_groups, kv_ranges = (t.clone() for t in _plan(layout, ((1, 1, 1), (1, 1, 1)), 0))
    a = {"q_groups": q_groups, "kv_ranges": kv_ranges}
    change(a)
    with pytest.raises(RuntimeError, match=message):
        native_ops().sliding_tile_attention_out(torch.empty_like(q), torch.empty(1, 2, layout.num_tokens), q, k, v,
                                                a["q_groups"], a["kv_ranges"], 0.25)


def test_bad_input_is_a_clear_error():
    layout = TileLayout((2, 4, 4), (1, 2, 2))
    q, k, v = make_qkv(layout, 2, 16)
    with pytest.raises(ValueError, match="3 windows for 2 heads"):
        sliding_tile_attention(q, k, v, layout, [(1, 1, 1)] * 3)
    with pytest.raises(ValueError, match="grid's 32 tokens"):
        sliding_tile_attention(q[:, :-1], k[:, :-1], v[:, :-1], layout, (1, 1, 1))
    with pytest.raises(ValueError, match="3 positive integers"):
        sliding_tile_attention(q, k, v, layout, (0, 1, 1))


def test_custom_op_has_a_fake_implementation():
    layout = TileLayout((2, 4, 4), (1, 2, 2))
    q, k, v = make_qkv(layout, 2, 16)
    from sglang_diffusion.ops.sliding_tile_attention import _plan, _sta_op

    q_groups, kv_ranges = _plan(layout, ((1, 1, 1), (2, 2, 2)), 0)
    torch.library.opcheck(_sta_op.op, (q, k, v, q_groups, kv_ranges, 0.25, "torch"),
                          test_utils=("test_schema", "test_faketensor"))


@requires_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_cpu_build_matches_the_reference(monkeypatch, dtype):
    """The portable build and every x86 build this CPU runs (SGLD_CPU_ISA picks one per call)."""
    layout = TileLayout((3, 5, 7), (2, 2, 3))
    windows = [(1, 2, 2), (2, 1, 3)]
    q, k, v = make_qkv(layout, 2, 40, 3, seed=11, dtype=dtype)
    expected, expected_lse = sliding_tile_attention_reference(q.float(), k.float(), v.float(), layout, windows, 3)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    isas = native_ops().cpu_isas()
    assert "default" in isas
    for isa in isas:
        monkeypatch.setenv("SGLD_CPU_ISA", isa)
        assert native_ops().cpu_isa() == isa
        out, lse = sliding_tile_attention(q, k, v, layout, windows, 3, backend="native")
        torch.testing.assert_close(out.float(), expected, atol=tol, rtol=tol)
        torch.testing.assert_close(lse, expected_lse, atol=1e-4, rtol=1e-5)
