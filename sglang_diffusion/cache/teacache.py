"""TeaCache (timestep-embedding-aware cache) over the block protocol of any native DiT.

Per step and guidance branch: the relative L1 change of the DiT's `signal` (the timestep-
modulated input of its first block) since the previous step, rescaled by a polynomial
calibrated per model, is accumulated; while the sum stays under the threshold the whole block
stack is skipped and its residual from the last computed step is added to the input instead.
A computed step resets the sum. The first `warmup_steps` steps always compute. Each guidance
branch keeps its own sum and residual.

Calibrations are published per model (TeaCache's fits, used by SGLang and FastVideo): for Wan2.1
they rescale the change of the timestep modulation, with the first 5 steps computed; for FLUX.1
the change of the first block's modulated input.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from sglang_diffusion.cache.reduce import relative_l1
from sglang_diffusion.cache.stats import CacheStats
from sglang_diffusion.errors import ConfigError
from sglang_diffusion.models.dits.blocks import Block, Signal, State

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TeaCacheCalibration:
    name: str  # the model it was fitted on
    coefficients: tuple[float, ...]  # highest power first
    warmup_steps: int
    default_threshold: float


# DiT class -> inner width -> calibration (TeaCache's published fits, "ret_steps" variant)
CALIBRATIONS = {
    "WanTransformer3DModel": {
        1536: TeaCacheCalibration("Wan2.1-T2V-1.3B fit", (-5.21862437e+04, 9.23041404e+03, -5.28275948e+02,
                                                      1.36987616e+01, -4.99875664e-02), 5, 0.08),
        5120: TeaCacheCalibration("Wan2.1-T2V-14B fit", (-3.03318725e+05, 4.90537029e+04, -2.65530556e+03,
                                                     5.87365115e+01, -3.15583525e-01), 5, 0.2),
    },
    # the modulated input of the first double-stream block; TeaCache's thresholds 0.25-0.8 for 1.5x-2.25x
    "FluxTransformer2DModel": {
        3072: TeaCacheCalibration("FLUX.1-dev fit", (4.98651651e+02, -2.83781631e+02, 5.58554382e+01,
                                                     -3.82021401e+00, 2.64230861e-01), 1, 0.4),
    },
}


# Without a published fit for a model: the relative change itself (polynomial x), 5 warm-up steps.
UNCALIBRATED = TeaCacheCalibration("no calibration: the raw relative change", (1.0, 0.0), 5, 0.3)


def calibration_for(model) -> TeaCacheCalibration:
    """The calibration of `model` (its DiT class and width). A family with published fits but
    not for this width (test models) uses the raw relative change instead, said in the log (a
    fit is a polynomial over the range of changes of the model it was made on; outside it, it
    gives nonsense, negative distances included). A family without any fit is refused."""
    family = CALIBRATIONS.get(type(model).__name__)
    if not family:
        raise ConfigError(f"TeaCache: no published calibration for {type(model).__name__}; "
                          "use Cache-DiT (SGLANG_CACHE_DIT_ENABLED=true) on this model instead")
    width = model.config.num_attention_heads * model.config.attention_head_dim
    if width in family:
        return family[width]
    logger.info("TeaCache: no calibration for %s of width %d (published: %s); accumulating the raw relative "
                "change of the timestep modulation, default threshold %g", type(model).__name__, width,
                ", ".join(c.name for c in family.values()), UNCALIBRATED.default_threshold)
    return UNCALIBRATED


@dataclass
class _Branch:
    signal: torch.Tensor | None = None  # the previous step's
    accumulated: float = 0.0
    residual: tuple | None = None  # every block's residual at the last computed step


@dataclass
class TeaCache:
    """One expert's TeaCache state over one request (`runner` per step and branch)."""

    calibration: TeaCacheCalibration
    threshold: float
    stats: CacheStats
    shard: object = None  # the SequenceShard of this rank's tokens (SP)
    branches: dict[str, _Branch] = field(default_factory=dict)

    def runner(self, step: int, branch: str) -> "_Runner":
        return _Runner(self, step, self.branches.setdefault(branch, _Branch()))

    def rescale(self, distance: float) -> float:
        out = 0.0
        for c in self.calibration.coefficients:
            out = out * distance + c
        return out


@dataclass
class _Runner:
    cache: TeaCache
    step: int
    branch: _Branch

    def run(self, blocks: Sequence[Block], state: State, signal: Signal | None = None) -> State:
        cache, branch = self.cache, self.branch
        current = signal()
        reuse = False
        if self.step >= cache.calibration.warmup_steps and branch.residual is not None and cache.threshold > 0:
            branch.accumulated += cache.rescale(relative_l1(branch.signal, current, cache.shard))
            reuse = branch.accumulated < cache.threshold
        branch.signal = current
        if reuse:
            cache.stats.count(0, len(blocks))
            return tuple(s + r for s, r in zip(state, branch.residual))
        before = state
        for block in blocks:
            state = block(state)
        branch.residual = tuple(a - b for a, b in zip(state, before))
        branch.accumulated = 0.0
        cache.stats.count(len(blocks), 0)
        return state
