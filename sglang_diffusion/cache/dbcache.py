"""DBCache (Cache-DiT's Dual Block Cache) over the block protocol of any native DiT.

Per step and guidance branch: the first Fn blocks always run; their residual (hidden state out
minus in) is compared with the one of the last step that ran every block. While the relative L1
difference stays under `residual_diff_threshold`, the middle blocks are skipped and their
residual from that step (or its TaylorSeer extrapolation) is added instead; the last Bn blocks
always run. Warm-up steps, a step computation mask (SCM) and a cap on cached steps in a row
force a step to compute everything. With the static SCM policy the mask alone decides.

Why not cache-dit's own adapter: it patches a diffusers transformer's forward and calls its
blocks with diffusers' argument patterns, keeps its state in a context per transformer (not per
request), and averages the residual difference over the whole world with `all_reduce(AVG)`
(which gloo lacks, and which mixes CFG-parallel branches). Our DiTs' blocks take bound step
inputs, share work across guidance branches and shard tokens over an SP group, so the same
policy is written here against `models.dits.blocks`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from sglang_diffusion.cache.reduce import relative_l1
from sglang_diffusion.cache.stats import CacheStats
from sglang_diffusion.cache.step_mask import step_mask
from sglang_diffusion.cache.taylorseer import TaylorSeer
from sglang_diffusion.config.cache import DBCacheParams
from sglang_diffusion.models.dits.blocks import Block, Signal, State

logger = logging.getLogger(__name__)


@dataclass
class _Branch:
    """One guidance branch's cache: what the last fully computed step left."""

    middle: TaylorSeer  # the middle blocks' residual per state tensor, by computed step
    fn_residual: object = None  # [B, S, D]: the first blocks' hidden residual at that step
    cached_in_a_row: int = 0
    last_step: int = -1


@dataclass
class DBCache:
    """One expert's DBCache state over one request (`runner` per step and branch)."""

    params: DBCacheParams
    num_steps: int  # the steps this expert runs in the request
    stats: CacheStats
    shard: object = None  # the SequenceShard of this rank's tokens (SP): the difference is summed over its group
    mask: list[bool] | None = None
    branches: dict[str, _Branch] = field(default_factory=dict)
    _warned: bool = False

    def __post_init__(self):
        p = self.params
        self.mask = step_mask(p.scm_preset, p.scm_compute_bins, p.scm_cache_bins, self.num_steps)

    def runner(self, step: int, branch: str) -> "_Runner":
        if branch not in self.branches:
            self.branches[branch] = _Branch(TaylorSeer(self.params.taylorseer_order if self.params.enable_taylorseer
                                                       else 0))
        return _Runner(self, step, self.branches[branch])

    def split(self, num_blocks: int) -> tuple[int, int]:
        """(Fn, Bn) for a DiT of `num_blocks` blocks, clamped (with a warning) to fit."""
        fn, bn = self.params.Fn_compute_blocks, self.params.Bn_compute_blocks
        if fn + bn > num_blocks:
            if not self._warned:
                logger.warning("DBCache: Fn_compute_blocks %d + Bn_compute_blocks %d is more than the DiT's %d "
                               "blocks; using Fn %d, Bn %d", fn, bn, num_blocks, min(fn, num_blocks),
                               max(0, min(bn, num_blocks - fn)))
                self._warned = True
            fn = min(fn, num_blocks)
            bn = max(0, min(bn, num_blocks - fn))
        return fn, bn

    def may_cache(self, step: int, branch: _Branch) -> bool | None:
        """False: this step computes every block; True: it reuses (static SCM); None: the
        residual difference decides."""
        p = self.params
        if step < p.max_warmup_steps or branch.last_step < 0:
            return False
        if self.mask is not None:
            if self.mask[step]:
                return False
            if p.scm_policy == "static":
                return True
        if 0 <= p.max_continuous_cached_steps <= branch.cached_in_a_row:
            return False
        if p.residual_diff_threshold <= 0:
            return False
        return None


@dataclass
class _Runner:
    cache: DBCache
    step: int
    branch: _Branch

    def run(self, blocks: Sequence[Block], state: State, signal: Signal | None = None) -> State:
        cache, branch = self.cache, self.branch
        fn, bn = cache.split(len(blocks))
        middle = blocks[fn:len(blocks) - bn]
        x0 = state[0]
        for block in blocks[:fn]:
            state = block(state)
        fn_residual = state[0] - x0
        reuse = cache.may_cache(self.step, branch) if middle else False
        if reuse is None:
            diff = relative_l1(branch.fn_residual, fn_residual, cache.shard, tokens=True)
            reuse = diff < cache.params.residual_diff_threshold
        if reuse:
            state = tuple(s + r for s, r in zip(state, branch.middle.predict(self.step)))
            branch.cached_in_a_row += 1
            cache.stats.count(len(blocks) - len(middle), len(middle))
        else:
            before = state
            for block in middle:
                state = block(state)
            branch.middle.update(self.step, tuple(a - b for a, b in zip(state, before)))
            branch.fn_residual, branch.last_step, branch.cached_in_a_row = fn_residual, self.step, 0
            cache.stats.count(len(blocks), 0)
        for block in blocks[len(blocks) - bn:]:
            state = block(state)
        return state
