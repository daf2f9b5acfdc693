"""Sliding tile attention (STA, Zhang et al. 2025, arXiv 2502.04507): attention over a video's
(t, h, w) token grid in which each query attends only to the key tiles in a 3D window of tiles
around its own, plus the text tokens where a model attends jointly.

The layout (``TileLayout``). The grid is cut into tiles of ``tile`` tokens (FastVideo's default
is 6 x 8 x 8) and tokens are reordered so that each tile is contiguous, tiles in row-major
(t, h, w) order. A grid that does not divide is padded up to whole tiles and the padding masked
out; here the padding is simply never materialised: a boundary tile holds only its real tokens,
so the reordered sequence has the same S tokens and ``tile_bounds`` says where each tile starts.
``reorder``/``restore`` apply the permutation and its inverse along any dim (tokens, RoPE tables,
per-token modulation), once before a DiT's first block and once after its last.

The window. A window (wt, wh, ww) counts tiles. The query tile at (a, b, c) attends to the key
tiles [s, s + w) along each axis with s = clamp(a - w // 2, 0, n - w): centred on the query's
tile and shifted inward at the grid's borders, so every query sees exactly wt * wh * ww tiles
(FastVideo's STA mask; for odd windows its "kernel centre clamped to half a window from the
edge"). A window wider than the grid covers the grid. With ``text_len`` > 0 the sequence is
[S video tokens (tiled) | text_len text tokens]: video queries also attend to every text key,
text queries to every key.

Because each row of ww tiles along w is contiguous in the tiled order, a query tile's keys are
wt * wh runs of tokens (fewer where runs meet): ``kv_ranges`` lists them, and the kernels iterate
over those runs only, so a window of a quarter of the tiles does a quarter of the work.

- ``sliding_tile_attention_reference``: dense attention with the equivalent boolean mask, built
  from the token-level definition above (not from the runs), in fp32: the spec.
- ``sliding_tile_attention``: the dispatcher. ``native`` (csrc/cpu/sliding_tile_attention.cpp,
  the CPU kernel that skips the key tiles outside the window), ``triton``
  (triton_kernels/sliding_tile_attention.py, CUDA), ``torch`` (gathers each tile's keys).
  Returns (out [B, S', H, D] in q's dtype, lse [B, H, S'] float32), S' = S + text_len.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional, Union

import torch

from sglang_diffusion.ops import _dispatch, _native
from sglang_diffusion.ops.attention import _check, default_scale
from sglang_diffusion.ops.attention import _why_not as _attention_why_not

Triple = tuple[int, int, int]
Windows = Union[Triple, Sequence[Triple]]  # one window for every head, or one per head


def _triple(value, what: str) -> Triple:
    out = tuple(int(v) for v in value)
    if len(out) != 3 or min(out) < 1:
        raise ValueError(f"sliding tile attention: {what} must be 3 positive integers (t, h, w), got {value!r}")
    return out  # type: ignore[return-value]


@dataclass(frozen=True)
class TileLayout:
    """A (t, h, w) token grid cut into tiles of ``tile`` tokens, tokens reordered tile by tile."""

    grid: Triple  # tokens along t, h, w (after patchify)
    tile: Triple  # tokens per tile along t, h, w

    def __post_init__(self):
        object.__setattr__(self, "grid", _triple(self.grid, "the token grid"))
        object.__setattr__(self, "tile", _triple(self.tile, "the tile size"))

    @property
    def num_tokens(self) -> int:
        return math.prod(self.grid)

    @property
    def tiles(self) -> Triple:
        """Tiles along t, h, w (partial tiles at the far borders count)."""
        return tuple(-(-g // t) for g, t in zip(self.grid, self.tile))  # type: ignore[return-value]

    @property
    def num_tiles(self) -> int:
        return math.prod(self.tiles)

    @functools.cached_property
    def _tables(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        (nt, nh, nw), (a, b, c) = self.tiles, self.tile
        padded = torch.full((nt * a, nh * b, nw * c), -1, dtype=torch.int64)
        padded[: self.grid[0], : self.grid[1], : self.grid[2]] = torch.arange(self.num_tokens).view(self.grid)
        padded = padded.view(nt, a, nh, b, nw, c).permute(0, 2, 4, 1, 3, 5).reshape(self.num_tiles, -1)
        real = padded >= 0  # [tiles, tokens per full tile]: the padding is dropped, not kept
        order = padded[real]  # [S]: original index of each tiled position
        bounds = torch.zeros(self.num_tiles + 1, dtype=torch.int64)
        bounds[1:] = real.sum(1).cumsum(0)
        return order, torch.argsort(order), bounds

    @property
    def order(self) -> torch.Tensor:
        """[S] int64: tiled position i holds the token at row-major index order[i]."""
        return self._tables[0]

    @property
    def inverse(self) -> torch.Tensor:
        """[S] int64: the token at row-major index j sits at tiled position inverse[j]."""
        return self._tables[1]

    @property
    def tile_bounds(self) -> torch.Tensor:
        """[num_tiles + 1] int64: tile g holds tiled positions [bounds[g], bounds[g + 1])."""
        return self._tables[2]

    def reorder(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """Row-major token order -> tiled order along ``dim`` (which has ``num_tokens`` entries)."""
        return x.index_select(dim, self.order.to(x.device))

    def restore(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """Tiled order -> row-major token order along ``dim``."""
        return x.index_select(dim, self.inverse.to(x.device))

    def clamp_window(self, window: Sequence[int]) -> Triple:
        """The window a kernel runs: each size at most the tiles along its axis."""
        return tuple(min(w, n) for w, n in zip(_triple(window, "a window"), self.tiles))  # type: ignore[return-value]

    def token_tile_coords(self) -> torch.Tensor:
        """[S, 3] int64: the (t, h, w) tile of each tiled position."""
        grid_coords = torch.stack(torch.meshgrid(*(torch.arange(g) for g in self.grid), indexing="ij"), -1)
        tiles = grid_coords.view(-1, 3) // torch.tensor(self.tile)  # row-major tokens
        return tiles[self.order]


def _head_windows(layout: TileLayout, windows: Windows, heads: int) -> tuple[Triple, ...]:
    if len(windows) == 3 and all(isinstance(w, int) for w in windows):
        windows = [windows] * heads  # type: ignore[list-item]
    if len(windows) != heads:
        raise ValueError(f"sliding tile attention: {len(windows)} windows for {heads} heads")
    return tuple(layout.clamp_window(w) for w in windows)


def _window_start(pos: torch.Tensor, window: int, n: int) -> torch.Tensor:
    return (pos - window // 2).clamp(0, n - window)


# ---- the reference ---------------------------------------------------------------------------


def sliding_tile_mask(layout: TileLayout, windows: Windows, heads: int, text_len: int = 0) -> torch.Tensor:
    """[H, S', S'] bool, S' = S + text_len, over the tiled order: True where a query attends."""
    wins = _head_windows(layout, windows, heads)
    coords = layout.token_tile_coords()  # [S, 3]
    s, total = layout.num_tokens, layout.num_tokens + text_len
    mask = torch.ones(heads, total, total, dtype=torch.bool)
    for h, win in enumerate(wins):
        inside = torch.ones(s, s, dtype=torch.bool)
        for axis in range(3):
            start = _window_start(coords[:, axis], win[axis], layout.tiles[axis])[:, None]  # [S, 1] queries
            key = coords[None, :, axis]  # [1, S] keys
            inside &= (key >= start) & (key < start + win[axis])
        mask[h, :s, :s] = inside
    return mask


def sliding_tile_attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: TileLayout, windows: Windows,
    text_len: int = 0, scale: Optional[float] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k, v [B, S', H, D] in tiled order (S' = S + text_len) -> (out [B, S', H, D] in q's
    dtype, lse [B, H, S'] float32): dense attention with ``sliding_tile_mask``, in fp32."""
    _check_inputs(q, k, v, layout, text_len)
    scale = default_scale(q.shape[-1]) if scale is None else scale
    mask = sliding_tile_mask(layout, windows, q.shape[2], text_len).to(q.device)  # [H, S', S']
    qf, kf, vf = (t.float().transpose(1, 2) for t in (q, k, v))  # [B, H, S', D]
    s = ((qf @ kf.transpose(-1, -2)) * scale).masked_fill(~mask, float("-inf"))  # [B, H, S', S']
    lse = torch.logsumexp(s, dim=-1)  # [B, H, S']
    out = torch.exp(s - lse[..., None]) @ vf
    return out.transpose(1, 2).to(q.dtype), lse


# ---- the key runs the kernels iterate over ---------------------------------------------------


@functools.lru_cache(maxsize=64)
def _tile_runs(layout: TileLayout, window: Triple) -> tuple[tuple[tuple[int, int], ...], ...]:
    """Per video tile (tiled order), its window's key runs [start, end) over tiled positions."""
    (nt, nh, nw), bounds = layout.tiles, layout.tile_bounds.tolist()
    wt, wh, ww = window

    def start(pos, w, n):
        return min(max(pos - w // 2, 0), n - w)

    runs = []
    for a in range(nt):
        for b in range(nh):
            for c in range(nw):
                t0, h0, w0 = start(a, wt, nt), start(b, wh, nh), start(c, ww, nw)
                mine: list[list[int]] = []
                for t in range(t0, t0 + wt):
                    for h in range(h0, h0 + wh):
                        first = (t * nh + h) * nw + w0
                        lo, hi = bounds[first], bounds[first + ww]
                        if mine and mine[-1][1] == lo:  # runs that meet become one
                            mine[-1][1] = hi
                        else:
                            mine.append([lo, hi])
                runs.append(tuple((lo, hi) for lo, hi in mine))
    return tuple(runs)


@functools.lru_cache(maxsize=64)
def _plan(layout: TileLayout, windows: tuple[Triple, ...], text_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(q_groups [G, 2], kv_ranges [H, G, R, 2]) int64 on the CPU, for the kernels.

    Group g is a run of queries [q_groups[g, 0], q_groups[g, 1]) that share their keys: a video
    tile, and with text one more group for the text queries (every key). kv_ranges[h, g] lists
    the key runs [start, end) of group g at head h, unused slots empty (start == end)."""
    s = layout.num_tokens
    per_head = []
    for window in windows:
        groups = [list(r) for r in _tile_runs(layout, window)]
        if text_len:
            for runs in groups:
                if runs[-1][1] == s:
                    runs[-1] = (runs[-1][0], s + text_len)
                else:
                    runs.append((s, s + text_len))
            groups.append([(0, s + text_len)])
        per_head.append(groups)
    width = max(len(runs) for groups in per_head for runs in groups)
    ranges = torch.zeros(len(windows), len(per_head[0]), width, 2, dtype=torch.int64)
    for h, groups in enumerate(per_head):
        for g, runs in enumerate(groups):
            ranges[h, g, : len(runs)] = torch.tensor(runs)
    bounds = layout.tile_bounds
    q_groups = torch.stack([bounds[:-1], bounds[1:]], dim=1)
    if text_len:
        q_groups = torch.cat([q_groups, torch.tensor([[s, s + text_len]])])
    return q_groups, ranges


@functools.lru_cache(maxsize=64)
def _on_device(layout: TileLayout, windows: tuple[Triple, ...], text_len: int, device: torch.device) -> torch.Tensor:
    """kv_ranges of ``_plan`` on ``device`` in int32 (the Triton kernel's), copied once per
    layout and windows."""
    return _plan(layout, windows, text_len)[1].to(device=device, dtype=torch.int32)


def computed_fraction(layout: TileLayout, windows: Windows, heads: int, text_len: int = 0) -> float:
    """Query-key pairs the kernels compute over S'^2 (1 for dense): the ideal work fraction."""
    q_groups, ranges = _plan(layout, _head_windows(layout, windows, heads), text_len)
    q_len = (q_groups[:, 1] - q_groups[:, 0]).double()  # [G]
    k_len = (ranges[..., 1] - ranges[..., 0]).sum(-1).double()  # [H, G]
    total = layout.num_tokens + text_len
    return float((k_len * q_len).sum() / (heads * total * total))


# ---- the dispatcher --------------------------------------------------------------------------


def _check_inputs(q, k, v, layout: TileLayout, text_len: int) -> None:
    _check(q, k, v)
    total = layout.num_tokens + text_len
    if q.shape[1] != total or k.shape[1] != total:
        raise ValueError(f"sliding tile attention: q and k must hold the grid's {layout.num_tokens} tokens"
                         f"{f' + {text_len} text tokens' if text_len else ''} = {total}, got "
                         f"{q.shape[1]} and {k.shape[1]}")


def _attention_rows(qf, kf, vf, scale) -> tuple[torch.Tensor, torch.Tensor]:
    """qf [B, H, m, D], kf, vf [B, H, n, D] fp32 -> (out [B, H, m, D], lse [B, H, m])."""
    s = (qf @ kf.transpose(-1, -2)) * scale
    lse = torch.logsumexp(s, dim=-1)
    return torch.exp(s - lse[..., None]) @ vf, lse


def _sta_torch(q, k, v, q_groups, kv_ranges, scale) -> tuple[torch.Tensor, torch.Tensor]:
    """Each query group against its gathered keys; heads that share runs go together."""
    b, sq, h, d = q.shape
    out = torch.empty(b, sq, h, d, dtype=q.dtype, device=q.device)
    lse = torch.empty(b, h, sq, dtype=torch.float32, device=q.device)
    qf, kf, vf = (t.float().transpose(1, 2) for t in (q, k, v))  # [B, H, S', D]
    for g, (q0, q1) in enumerate(q_groups.tolist()):
        by_runs: dict[tuple, list[int]] = {}
        for head in range(h):
            runs = tuple((lo, hi) for lo, hi in kv_ranges[head, g].tolist() if hi > lo)
            by_runs.setdefault(runs, []).append(head)
        for runs, heads in by_runs.items():
            keys = torch.cat([torch.arange(lo, hi) for lo, hi in runs]).to(q.device)
            hs = torch.tensor(heads, device=q.device)
            o, l = _attention_rows(qf[:, hs, q0:q1], kf[:, hs][:, :, keys], vf[:, hs][:, :, keys], scale)
            out[:, q0:q1, hs] = o.transpose(1, 2).to(q.dtype)
            lse[:, hs, q0:q1] = l
    return out, lse


def _why_not(q: torch.Tensor) -> dict[str, Optional[str]]:
    reasons = _attention_why_not(q, "sliding_tile_attention_out")
    if reasons["native"] is None and q.device.type != "cpu":
        reasons["native"] = "the _C sliding tile kernel runs on the CPU only"
    return reasons


def _run(impl: str, q, k, v, q_groups, kv_ranges, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    if impl == "torch":
        return _sta_torch(q, k, v, q_groups, kv_ranges, scale)
    if impl == "triton":
        from sglang_diffusion.triton_kernels.sliding_tile_attention import sliding_tile_attention_fwd

        return sliding_tile_attention_fwd(q, k, v, q_groups, kv_ranges, scale)
    b, sq, h, d = q.shape
    out = torch.empty(b, sq, h, d, dtype=q.dtype, device=q.device)
    lse = torch.empty(b, h, sq, dtype=torch.float32, device=q.device)
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    _native.native_library().ops.sliding_tile_attention_out(out, lse, q, k, v, q_groups, kv_ranges, scale)
    return out, lse


@_dispatch.custom_op("sglang_diffusion::sliding_tile_attention", mutates_args=())
def _sta_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_groups: torch.Tensor, kv_ranges: torch.Tensor,
    scale: float, impl: Optional[str],
) -> tuple[torch.Tensor, torch.Tensor]:
    detail = f"{q.device.type} {q.dtype}, head dim {q.shape[-1]}"
    chosen = _dispatch.choose("sliding_tile_attention", impl, _why_not(q), detail)
    return _run(chosen, q, k, v, q_groups, kv_ranges, scale)


@_sta_op.register_fake
def _(q, k, v, q_groups, kv_ranges, scale, impl):
    b, sq, h, d = q.shape
    return q.new_empty(b, sq, h, d), q.new_empty(b, h, sq, dtype=torch.float32)


def sliding_tile_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: TileLayout, windows: Windows,
    text_len: int = 0, scale: Optional[float] = None, backend: Optional[str] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k, v [B, S', H, D] in tiled order, S' = layout.num_tokens + text_len (text last) ->
    (out [B, S', H, D] in q's dtype, lse [B, H, S'] float32). ``windows``: one (wt, wh, ww)
    in tiles for every head, or one per head. ``backend``: None (pick), native, triton, torch."""
    _check_inputs(q, k, v, layout, text_len)
    scale = default_scale(q.shape[-1]) if scale is None else float(scale)
    wins = _head_windows(layout, windows, q.shape[2])
    q_groups, kv_ranges = _plan(layout, wins, int(text_len))
    if q.device.type != "cpu":  # q_groups stays on the CPU: the launcher cuts it into blocks there
        kv_ranges = _on_device(layout, wins, int(text_len), q.device)
    if _dispatch.needs_autograd(q, k, v):
        return sliding_tile_attention_reference(q, k, v, layout, wins, text_len, scale)
    return _sta_op(q, k, v, q_groups, kv_ranges, scale, backend)
