"""The block protocol every native DiT exposes, so that step caching (`sglang_diffusion.cache`)
wraps the block loop once, for every family.

A DiT's forward is `embed -> blocks -> final`:

- embed: latents, timestep (and prompt) -> the block *state*, a tuple of tensors of this rank's
  tokens: `(hidden [B, S, D],)` for a single-stream DiT (Wan), `(hidden [B, S, D],
  encoder_hidden [B, L, D])` for a dual-stream one (FLUX, Qwen-Image). Under sequence
  parallelism the state holds this rank's shard; token reorders (sliding-tile attention) happen
  before the first block and after the last, outside the loop.
- blocks: one flat sequence of `Block`s, each `state -> state` of the same shapes. Whatever a
  block needs besides the state (timestep modulation, RoPE tables, the prompt's K/V, the SP
  shard) the DiT binds into it. Families with two kinds of blocks (FLUX: double-stream, then
  single-stream) make both map the same tuple, so the sequence stays flat.
- final: the state -> the prediction.

The loop runs through `run_blocks(blocks, state, runner, signal)`. Without a runner every block
runs in order. A `BlockRunner` (one per denoising step and guidance branch, made by a request's
cache state) decides which blocks run and what stands for the others (a cached residual of the
skipped blocks); it sees only blocks and states, never the family.

`signal`: a zero-argument callable giving the tensor TeaCache compares between steps, the
timestep-modulated input of the first block as each family defines it (Wan: the timestep
modulation [B, 6, D]); called at most once per run, and only by runners that use it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch

State = tuple[torch.Tensor, ...]  # (hidden [B, S, D],) or (hidden [B, S, D], encoder_hidden [B, L, D])
Block = Callable[[State], State]
Signal = Callable[[], torch.Tensor]


class BlockRunner(Protocol):
    def run(self, blocks: Sequence[Block], state: State, signal: Signal | None = None) -> State:
        """The state after `blocks`, each computed or stood in for as the runner decides."""
        ...


def run_blocks(blocks: Sequence[Block], state: State, runner: BlockRunner | None = None,
               signal: Signal | None = None) -> State:
    """The DiT's block loop: every block in order, or as `runner` decides."""
    if runner is not None:
        return runner.run(blocks, state, signal)
    for block in blocks:
        state = block(state)
    return state
