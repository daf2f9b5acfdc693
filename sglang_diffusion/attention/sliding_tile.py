"""Which window sliding tile attention runs at each denoising step, layer and head, and how a
DiT's self-attention runs tiled (ops/sliding_tile_attention.py has the layout and the kernels).

The mask strategy (``MaskStrategy``), from either
- ``mask_strategy_file_path``: FastVideo's mask-strategy JSON (what its mask search writes),
  ``{"<step>_<layer>_<head>": [wt, wh, ww], ...}``, windows in tiles. A step the file names
  must give a window for every layer and head of the model; a step it does not name runs full
  attention (FastVideo's tuned files leave out the first steps). A layer or head index the
  model does not have is a ConfigError.
- ``window`` (``--attention-backend-config window=3x3x3``): one window for every step, layer
  and head.
A window wider than the token grid's tiles covers the whole axis: it is clamped with a warning
that names the window and the grid.

The step. The DiT sees timesteps, not step numbers: ``StepCounter`` counts them. Within one
request the timesteps strictly decrease (every scheduler we run), so a timestep below the last
one is the next step, the same one is the same step (classifier-free guidance branches, the
layout probe), and a higher or equal first one starts a new request at step 0. One counter per
backend, so the two experts of Wan2.2 A14B count one schedule.

A forward (``SlidingTiles.plan``): the tiled layout of its grid and this step's windows, or
None for a full-attention step. ``TiledForward.layer(i, shard)`` is what layer i's
self-attention runs through in place of the sequence shard: STA over the tiled tokens, inside
the Ulysses all-to-all when there is one (each rank runs its heads' windows). Ring attention
would need each ring block's keys to be whole windows: refused.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from sglang_diffusion.errors import ConfigError
from sglang_diffusion.ops.sliding_tile_attention import TileLayout, Triple

logger = logging.getLogger(__name__)

_KEY = re.compile(r"^(\d+)_(\d+)_(\d+)$")


def parse_triple(value, what: str) -> Triple:
    """(t, h, w) from "3x3x3", "3,3,3" or [3, 3, 3]: three positive integers."""
    parts = re.split(r"[x,\s]+", value.strip()) if isinstance(value, str) else value
    try:
        out = tuple(int(p) for p in parts)
    except (TypeError, ValueError):
        out = ()
    if len(out) != 3 or min(out) < 1 or any(isinstance(p, bool) for p in parts):
        raise ConfigError(f"{what}: expected three positive integers (t, h, w) such as 3x3x3, got {value!r}")
    return out  # type: ignore[return-value]


@dataclass(frozen=True)
class MaskStrategy:
    """Windows per step: steps[step][layer][head] = (wt, wh, ww); ``window`` for every step."""

    steps: dict[int, tuple[tuple[Triple, ...], ...]] = field(default_factory=dict)
    window: Optional[Triple] = None
    source: str = ""

    @classmethod
    def uniform(cls, window: Triple) -> "MaskStrategy":
        return cls(window=window, source=f"window {'x'.join(map(str, window))}")

    @classmethod
    def from_file(cls, path: str | Path) -> "MaskStrategy":
        where = f"mask_strategy_file_path {str(path)!r}"
        try:
            data = json.loads(Path(path).expanduser().read_text())
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read it: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise ConfigError(f"{where}: not valid JSON: {exc}") from None
        if not isinstance(data, dict) or not data:
            raise ConfigError(f"{where}: expected a JSON object of \"step_layer_head\": [wt, wh, ww] entries")
        entries: dict[int, dict[tuple[int, int], Triple]] = {}
        for key, value in data.items():
            match = _KEY.match(str(key))
            if match is None:
                raise ConfigError(f"{where}: key {key!r} is not \"<step>_<layer>_<head>\"")
            step, layer, head = map(int, match.groups())
            entries.setdefault(step, {})[layer, head] = parse_triple(value, f"{where}: {key}")
        steps = {}
        for step, windows in sorted(entries.items()):
            layers = 1 + max(layer for layer, _ in windows)
            heads = 1 + max(head for _, head in windows)
            missing = [f"{layer}_{head}" for layer in range(layers) for head in range(heads) if (layer, head) not in windows]
            if missing:
                raise ConfigError(f"{where}: step {step} names {len(windows)} of its {layers} layers x {heads} heads; "
                                  f"missing {', '.join(f'{step}_{m}' for m in missing[:6])}"
                                  f"{' ...' if len(missing) > 6 else ''}")
            steps[step] = tuple(tuple(windows[layer, head] for head in range(heads)) for layer in range(layers))
        return cls(steps=steps, source=str(path))

    def check_model(self, num_layers: int, num_heads: int) -> None:
        """ConfigError unless every named step has exactly the model's layers and heads."""
        for step, layers in self.steps.items():
            if len(layers) != num_layers or len(layers[0]) != num_heads:
                raise ConfigError(f"mask_strategy_file_path {self.source!r}: step {step} has windows for "
                                  f"{len(layers)} layers x {len(layers[0])} heads, the model has "
                                  f"{num_layers} layers x {num_heads} heads")

    def windows(self, step: int) -> Optional[tuple[tuple[Triple, ...], ...]]:
        """[layer][head] windows of ``step``; None: full attention."""
        if self.window is not None:
            return None  # expanded by SlidingTiles, which knows the layers and heads
        return self.steps.get(step)

    def describe(self) -> str:
        if self.window is not None:
            return self.source
        return f"{self.source} (steps {', '.join(map(str, sorted(self.steps)))}; other steps full attention)"


class StepCounter:
    """The denoising step of each forward, counted from its timestep (see the module doc)."""

    def __init__(self):
        self.step, self.last = 0, None

    def observe(self, timestep: float) -> int:
        if self.last is None or timestep > self.last:
            self.step = 0
        elif timestep < self.last:
            self.step += 1
        self.last = timestep
        return self.step


class SlidingTiles:
    """One DiT's sliding tile attention: its layers, heads and tile size, and the backend's
    strategy and step counter."""

    def __init__(self, backend, num_layers: int, num_heads: int, tile: Triple):
        self.backend, self.num_layers, self.num_heads, self.tile = backend, num_layers, num_heads, tile
        backend.strategy.check_model(num_layers, num_heads)
        self._warned: set = set()

    def plan(self, grid: Triple, timestep: torch.Tensor) -> Optional["TiledForward"]:
        """The tiling of a forward over ``grid`` at ``timestep`` ([B] or [B, S]); None: dense."""
        step = self.backend.counter.observe(float(timestep.max()))
        strategy = self.backend.strategy
        if strategy.window is not None:
            windows = ((strategy.window,) * self.num_heads,) * self.num_layers
        else:
            windows = strategy.windows(step)
            if windows is None:
                return None
        layout = TileLayout(grid, self.tile)
        clamped = tuple(tuple(layout.clamp_window(w) for w in heads) for heads in windows)
        self._warn_clamped(layout, windows, clamped)
        return TiledForward(layout, clamped, step)

    def _warn_clamped(self, layout: TileLayout, windows, clamped) -> None:
        changed = sorted({(w, c) for ws, cs in zip(windows, clamped) for w, c in zip(ws, cs) if w != c})
        key = (layout, tuple(changed))
        if changed and key not in self._warned:
            self._warned.add(key)
            logger.warning("sliding tile attention: windows wider than this grid's %s tiles (%s tokens in tiles "
                           "of %s) cover the whole axis: %s", "x".join(map(str, layout.tiles)),
                           "x".join(map(str, layout.grid)), "x".join(map(str, layout.tile)),
                           ", ".join(f"{w} -> {c}" for w, c in changed))


@dataclass(frozen=True)
class TiledForward:
    """One forward's tiling: the layout and, per layer, the window of each head."""

    layout: TileLayout
    windows: tuple[tuple[Triple, ...], ...]  # [layer][head], clamped to the grid
    step: int

    def layer(self, index: int, shard=None) -> "TiledSelfAttention":
        return TiledSelfAttention(self.layout, self.windows[index], shard, index)


@dataclass(frozen=True)
class TiledSelfAttention:
    """Layer ``layer``'s self-attention over the tiled tokens; stands where a DiT passes its
    ``distributed.sharding.SequenceShard`` (``attention(q, k, v, backend)``), which it wraps
    under sequence parallelism."""

    layout: TileLayout
    windows: tuple[Triple, ...]  # per head, all heads
    shard: object = None  # SequenceShard or None
    layer: int = 0

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend,
                  scale: float | None = None) -> torch.Tensor:
        # q, k, v [B, s, H, D] (this rank's tokens, tiled order) -> [B, s, H, D]
        if self.shard is None:
            return backend.tiled(self.layout, self.windows, self.layer).forward(q, k, v, scale)[0]
        return self.shard.attention(q, k, v, self._bound(backend, q.shape[2]), scale)

    def joint_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, text_q: torch.Tensor,
                        text_k: torch.Tensor, text_v: torch.Tensor, backend, scale: float | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """A dual-stream DiT's joint attention (HunyuanVideo; the shard's ``joint_attention``):
        video q, k, v [B, s, H, D] in tiled order and text [B, L, H, D] -> (video out [B, s, H, D],
        text out [B, L, H, D]). Video queries see their window and all the text; text sees all."""
        length = text_q.shape[1]
        if self.shard is None:
            bound = backend.tiled(self.layout, self.windows, self.layer, length)
            out = bound.forward(*(torch.cat(pair, dim=1) for pair in ((q, text_q), (k, text_k), (v, text_v))),
                                scale)[0]
            return out[:, :-length], out[:, -length:]
        return self.shard.joint_attention(q, k, v, text_q, text_k, text_v, self._bound(backend, q.shape[2], length),
                                          scale)

    def _bound(self, backend, heads: int, text_len: int = 0):
        """The backend bound to this rank's heads (after the Ulysses all-to-all) and windows."""
        groups = self.shard.groups
        if groups.ring.size > 1:
            raise ConfigError("attention_backend sliding_tile_attn: ring attention (ring_degree > 1) splits the keys "
                              "across ranks, not by tile windows; use ulysses_degree for sequence parallelism")
        local = heads // groups.ulysses.size  # heads per rank after the all-to-all
        first = groups.ulysses.rank * local
        return backend.tiled(self.layout, self.windows[first:first + local], self.layer, text_len)
