"""What step caching a native pipeline runs, and its state over one request.

`Caching` is decided when the pipeline is built: Cache-DiT's DBCache settings when it is on
(`SGLANG_CACHE_DIT_ENABLED`, `--enable-cache-dit`, `--cache-dit-config`), else nothing. A request
that asks for TeaCache (`enable_teacache`) runs TeaCache instead, for that request only.

`Caching.start` makes a fresh `RequestCache` for every request, so no request sees another's
residuals, counters or settings; the denoising stage asks it for one `BlockRunner` per step and
guidance branch ("cond", "uncond", or "joined" for both in one batch), each expert of a
two-expert model (Wan2.2) with its own settings and its own step count.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass

from sglang_diffusion.cache.dbcache import DBCache
from sglang_diffusion.cache.stats import CacheStats
from sglang_diffusion.cache.teacache import TeaCache, calibration_for
from sglang_diffusion.config.cache import CacheDitParams, load_cache_dit_file
from sglang_diffusion.errors import ConfigError
from sglang_diffusion.models.dits.blocks import BlockRunner

logger = logging.getLogger(__name__)


def check_block_protocol(experts: list, what: str) -> None:
    """A ConfigError unless every DiT takes a block runner (`models.dits.blocks`)."""
    for model in experts:
        if "runner" not in inspect.signature(model.forward).parameters:
            raise ConfigError(f"{what}: the native {type(model).__name__} does not run its blocks through the block "
                              "protocol yet, so it cannot cache steps; use --backend diffusers for Cache-DiT")


@dataclass
class RequestCache:
    experts: list  # one DBCache or TeaCache per expert
    stats: CacheStats

    def __post_init__(self):
        self._steps = [0] * len(self.experts)

    def step(self, expert: int) -> Callable[[str], BlockRunner]:
        """The runners of `expert`'s next step, by guidance branch."""
        local, cache = self._steps[expert], self.experts[expert]
        self._steps[expert] += 1
        return lambda branch: cache.runner(local, branch)


@dataclass(frozen=True)
class Caching:
    cache_dit: CacheDitParams | None = None  # None: Cache-DiT off

    @classmethod
    def from_args(cls, args) -> "Caching":
        """From `ServerArgs`; a bad `--cache-dit-config` fails here, when the pipeline is built."""
        if not args.cache_dit_enabled:
            return cls()
        params = args.cache_dit_params
        if args.cache_dit_config is not None:
            params = load_cache_dit_file(args.cache_dit_config, params)
        return cls(params)

    def describe(self) -> str:
        if self.cache_dit is None:
            return "off"
        text = f"Cache-DiT DBCache {self.cache_dit.primary.describe()}"
        if self.cache_dit.secondary != self.cache_dit.primary:
            text += f"; second expert {self.cache_dit.secondary.describe()}"
        return text

    def start(self, params, experts: list, steps: list[int], shard=None) -> RequestCache | None:
        """A request's cache state, or None when it runs exact. `params`: its SamplingParams;
        `steps[i]`: how many steps expert i runs; `shard`: this rank's SequenceShard under SP."""
        if params.enable_teacache:
            check_block_protocol(experts, "enable_teacache")
            calibrations = [calibration_for(model) for model in experts]
            threshold = (params.teacache_thresh if params.teacache_thresh is not None
                         else calibrations[0].default_threshold)
            stats = CacheStats(f"TeaCache thresh {threshold:g} ({calibrations[0].name})")
            return RequestCache([TeaCache(c, threshold, stats, shard) for c in calibrations], stats)
        if self.cache_dit is None:
            return None
        stats = CacheStats(f"DBCache {self.cache_dit.primary.describe()}")
        return RequestCache([DBCache(self.cache_dit.for_expert(i), n, stats, shard) for i, n in enumerate(steps)],
                            stats)
