"""Benchmark: sliding tile attention (STA) against dense attention at a video-like token grid.

    python benchmarks/kernels/sliding_tile_attention.py [--grid 12x24x40 --tile 6x6x10 \\
        --windows 1x4x4,1x2x4,1x2x2 --heads 12 --head-dim 128 --dtype float32]

The grid's tokens are in tiled order (as the DiT hands them over). Providers, [B, S, H, D] in:
- sdpa:          F.scaled_dot_product_attention, dense (the torch_sdpa backend)
- dense_native:  our dense kernel (_C attention_out), the baseline of the ideal
- sta_<window>:  our sliding tile kernel (_C sliding_tile_attention_out) for each window
A window's work fraction f is the query-key pairs it computes over S^2 (computed_fraction; the
default windows on 2 x 4 x 4 tiles of 6 x 6 x 10 tokens are 1/2, 1/4 and 1/8 of the tiles: 6x8x8
tiles would give 2 x 3 x 5 = 30 tiles, which no window quarters). Its ideal time is
dense_native x f; ``fraction_of_ideal`` = ideal / measured (1: the speed-up is the whole 1/f).
Providers alternate within each repetition; medians. One JSON file per run in benchmarks/results/.
"""

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

from sglang_diffusion.ops import _dispatch, _native  # noqa: E402
from sglang_diffusion.ops.sliding_tile_attention import (  # noqa: E402
    TileLayout, _head_windows, _plan, computed_fraction, sliding_tile_attention, sliding_tile_attention_reference,
)


def _triple(text: str) -> tuple[int, int, int]:
    return tuple(int(n) for n in text.split("x"))  # type: ignore[return-value]


def _name(window) -> str:
    return "sta_" + "x".join(map(str, window))


def check(dtype, layout_tile, windows, heads, head_dim) -> None:
    """The kernel against the masked reference on a small grid with the same tiles."""
    layout = TileLayout(tuple(2 * t for t in layout_tile), layout_tile)
    q, k, v = harness.randn(torch.device("cpu"), dtype, *[(1, layout.num_tokens, 2, head_dim)] * 3)
    for window in windows:
        got, _ = sliding_tile_attention(q, k, v, layout, window, backend="native")
        want, _ = sliding_tile_attention_reference(q, k, v, layout, window)
        torch.testing.assert_close(got.float(), want.float(), atol=2e-2 if dtype != torch.float32 else 1e-4, rtol=1e-2)


def measure(device, dtype, grid, tile, windows, heads, head_dim, warmup, reps) -> dict:
    layout = TileLayout(grid, tile)
    s, h, d = layout.num_tokens, heads, head_dim
    q, k, v = harness.randn(device, dtype, *[(1, s, h, d)] * 3)  # [B, S, H, D], tiled order
    out, lse = torch.empty_like(q), torch.empty(1, h, s, device=device)
    ops = _native.native_library().ops
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, S, D] views
    fns = {
        "sdpa": lambda: F.scaled_dot_product_attention(qt, kt, vt),
        "dense_native": lambda: ops.attention_out(out, lse, q, k, v, d ** -0.5),
    }
    fractions = {}
    for window in windows:
        q_groups, kv_ranges = _plan(layout, _head_windows(layout, window, h), 0)
        fns[_name(window)] = (lambda g=q_groups, r=kv_ranges: ops.sliding_tile_attention_out(out, lse, q, k, v, g, r,
                                                                                            d ** -0.5))
        fractions[_name(window)] = computed_fraction(layout, window, h)
    with torch.inference_mode():
        results = harness.time_providers(fns, warmup, reps, device)
    dense = results["dense_native"]["median_ms"]
    flops = 4 * h * s * s * d
    for name, r in results.items():
        f = fractions.get(name, 1.0)
        r["work_fraction"] = f
        r["gflops_computed"] = flops * f / r["median_ms"] / 1e6  # only the pairs actually computed
        if name in fractions:
            r["speedup_vs_dense_native"] = dense / r["median_ms"]
            r["ideal_speedup"] = 1 / f
            r["fraction_of_ideal"] = dense * f / r["median_ms"]
    return dict(grid=list(grid), tile=list(tile), tiles=list(layout.tiles), windows=[list(w) for w in windows],
                shapes={"q": [1, s, h, d]}, dtype=harness.dtype_name(dtype), dense_flops=flops, results=results,
                speedup_vs_sdpa=harness.speedups(results, "sdpa"))


def _column(name: str, r: dict) -> str:
    text = f"{r['gflops_computed']:.1f} GFLOP/s computed, work {r['work_fraction']:.3f}"
    if "fraction_of_ideal" in r:
        text += (f", {r['speedup_vs_dense_native']:.2f}x dense_native (ideal {r['ideal_speedup']:.2f}x: "
                 f"{100 * r['fraction_of_ideal']:.0f}% of it)")
    return text


def main() -> None:
    parser = harness.argument_parser(__doc__, warmup=1, reps=5)
    parser.add_argument("--grid", default="12x24x40", help="tokens t x h x w")
    parser.add_argument("--tile", default="6x6x10", help="tokens per tile t x h x w")
    parser.add_argument("--windows", default="1x4x4,1x2x4,1x2x2", help="windows in tiles, comma-separated")
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--head-dim", type=int, default=128)
    args = parser.parse_args()

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    reason = _dispatch.native_why_not(device, "sliding_tile_attention_out")
    if reason is not None or device.type != "cpu":
        sys.exit(f"this benchmark times the _C CPU kernels: {reason or 'run it with --device cpu'}")
    grid, tile = _triple(args.grid), _triple(args.tile)
    windows = [_triple(w) for w in args.windows.split(",")]
    check(dtype, tile, windows, args.heads, args.head_dim)
    fields = measure(device, dtype, grid, tile, windows, args.heads, args.head_dim, args.warmup, args.reps)
    headline = (f"sliding tile attention, grid {args.grid} in tiles of {args.tile} ({'x'.join(map(str, fields['tiles']))} "
                f"tiles), {args.heads} heads x {args.head_dim}, {args.dtype} on {device}")
    rec = harness.record("sliding_tile_attention", device, **fields)
    harness.publish(rec, "sliding_tile_attention", args.out_dir, headline, baseline="sdpa", extra=_column)


if __name__ == "__main__":
    main()
