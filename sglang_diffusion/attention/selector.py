"""Which attention backend runs: ``select_attention_backend(name, device=, dtype=, head_dim=)``.

Precedence (``resolve_backend_name``): ``--attention-backend`` > a per-component override >
the platform default, ``auto``.

- An explicit name: that backend, or a ConfigError naming why it cannot run here.
- ``auto``: tuned, not guessed. On first use for a (device, dtype, head dim) the exact backends
  that can run are timed on a short representative shape and the fastest is kept; the choice
  is cached on disk (``<cache_dir>/attention_autotune.json``, keyed also by the torch and
  package versions and the device's name) and logged with its timings. Approximate backends
  (``sage_attn``) are never chosen by ``auto``: name them.
- ``fa3`` is an alias of ``fa`` (SGLang diffusion's name for it).
- ``sliding_tile_attn`` (approximate, video DiTs only) is what ``mask_strategy_file_path`` asks
  for: ``attention_request`` turns the flags into a name and options.
- An unknown name is a ConfigError listing the valid ones. ``--attention-backend-config``'s
  options are validated against the chosen backend (unknown key: ConfigError).

Every resolution is logged once, with its reason. Resolution is a pure function of its
arguments (plus the on-disk tuning cache), cached in-process.
"""

from __future__ import annotations

import functools
import logging
import statistics
import time
from pathlib import Path
from typing import Any, Optional

import torch

from sglang_diffusion import tuning_cache
from sglang_diffusion.attention.backends.base import AttentionBackend
from sglang_diffusion.attention.backends.fa import FlashAttentionBackend
from sglang_diffusion.attention.backends.sage_attn import SageAttentionBackend
from sglang_diffusion.attention.backends.sliding_tile_attn import SlidingTileAttentionBackend
from sglang_diffusion.attention.backends.torch_sdpa import TorchSdpaBackend
from sglang_diffusion.attention.backends.triton import TritonBackend
from sglang_diffusion.attention.config import parse_backend_config, validate_options
from sglang_diffusion.errors import ConfigError

logger = logging.getLogger(__name__)

BACKENDS: dict[str, type[AttentionBackend]] = {
    cls.name: cls for cls in (FlashAttentionBackend, TorchSdpaBackend, SageAttentionBackend, TritonBackend,
                              SlidingTileAttentionBackend)
}
ALIASES = {"fa3": "fa"}
VALID_NAMES = ("auto", *BACKENDS, *ALIASES)
DEFAULT_CACHE_DIR = tuning_cache.DEFAULT_CACHE_DIR
CACHE_FILE = "attention_autotune.json"


def attention_request(attention_backend: str, attention_backend_config: Optional[str],
                      mask_strategy_file_path: Optional[str]) -> tuple[str, dict[str, Any] | str | None]:
    """(backend name, its options) from the flags: ``mask_strategy_file_path`` selects
    sliding_tile_attn (with ``auto``) and becomes its option of that name."""
    if not mask_strategy_file_path:
        return attention_backend, attention_backend_config
    if attention_backend not in ("auto", SlidingTileAttentionBackend.name):
        raise ConfigError(f"mask_strategy_file_path is the window file of sliding tile attention: use "
                          f"--attention-backend sliding_tile_attn (or auto), not {attention_backend}")
    options = parse_backend_config(attention_backend_config)
    options["mask_strategy_file_path"] = mask_strategy_file_path
    return SlidingTileAttentionBackend.name, options


def resolve_backend_name(flag: Optional[str], component_override: Optional[str] = None) -> str:
    """``--attention-backend`` (when not auto) > the component's override > ``auto``."""
    if flag and flag != "auto":
        return flag
    return component_override or "auto"


def select_attention_backend(
    name: str = "auto",
    *,
    device: torch.device | str,
    dtype: torch.dtype,
    head_dim: int,
    config: dict[str, Any] | str | None = None,
    cache_dir: Path | str | None = None,
) -> AttentionBackend:
    """The backend to run, bound to device, dtype, head_dim and its validated options.

    ``config``: the options (a dict, or ``--attention-backend-config``'s text)."""
    if name not in VALID_NAMES:
        raise ConfigError(f"attention_backend: unknown backend {name!r} (valid: {', '.join(VALID_NAMES)})")
    name = ALIASES.get(name, name)
    options = parse_backend_config(config) if isinstance(config, str) or config is None else dict(config)
    for key, value in options.items():
        if not isinstance(value, (bool, int, float, str)):
            raise ConfigError(f"attention_backend_config: {key} must be a single value, got {value!r}")
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    cache = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE_DIR
    return _select(name, str(device), dtype, int(head_dim), tuple(sorted(options.items())), str(cache))


@functools.cache
def _select(name, device, dtype, head_dim, options, cache_dir) -> AttentionBackend:
    device = torch.device(device)
    options = dict(options)
    if name == "auto":
        name, reason = _auto(device, dtype, head_dim, Path(cache_dir))
    else:
        reason = "requested"
    cls = BACKENDS[name]
    opts = validate_options(name, cls.OPTIONS, options)
    refusals = cls.why_not(device, dtype, head_dim, opts)
    if refusals:
        raise ConfigError(f"attention backend {name!r} cannot run on {device} with {_dt(dtype)} and head dim "
                          f"{head_dim}: " + "; ".join(refusals))
    backend = cls(device, dtype, head_dim, opts)
    logger.info("attention backend: %r (%s)", backend, reason)
    return backend


def _dt(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _runnable_exact(device, dtype, head_dim) -> tuple[list[str], dict[str, str]]:
    runnable, refused = [], {}
    for name, cls in BACKENDS.items():
        if not cls.exact:
            continue
        reasons = cls.why_not(device, dtype, head_dim, validate_options(name, cls.OPTIONS, {}))
        if reasons:
            refused[name] = "; ".join(reasons)
        else:
            runnable.append(name)
    return runnable, refused


def _cache_key(device, dtype, head_dim) -> str:
    from sglang_diffusion import __version__

    return (f"{tuning_cache.device_name(device)}|{_dt(dtype)}|d{head_dim}|torch {torch.__version__}|"
            f"sglang-diffusion {__version__}")


def _tuning_shape(device: torch.device, head_dim: int) -> tuple[int, int, int, int]:
    """A short representative self-attention shape [B, S, H, D]: a few ms per call on a CPU."""
    return (1, 4096, 4, head_dim) if device.type == "cuda" else (1, 1024, 2, head_dim)


def _time_backend(backend: AttentionBackend, shape, reps: int = 3) -> float:
    gen = torch.Generator(device=backend.device).manual_seed(0)
    q, k, v = (torch.randn(shape, generator=gen, device=backend.device).to(backend.dtype) for _ in range(3))
    with torch.inference_mode():
        backend.forward(q, k, v)  # warm-up: first-call costs (compilation, allocation)
        samples = []
        for _ in range(reps):
            if backend.device.type == "cuda":
                torch.cuda.synchronize(backend.device)
            start = time.perf_counter()
            backend.forward(q, k, v)
            if backend.device.type == "cuda":
                torch.cuda.synchronize(backend.device)
            samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def _auto(device, dtype, head_dim, cache_dir: Path) -> tuple[str, str]:
    runnable, refused = _runnable_exact(device, dtype, head_dim)
    skipped = "; ".join(f"{n}: {r}" for n, r in refused.items())
    if not runnable:
        raise ConfigError(f"no attention backend can run on {device} with {_dt(dtype)}: {skipped}")
    if len(runnable) == 1:
        return runnable[0], f"auto: the only exact backend that runs here ({skipped})"
    path = cache_dir / CACHE_FILE
    key = _cache_key(device, dtype, head_dim)
    entry = tuning_cache.read(path).get(key)
    if isinstance(entry, dict) and entry.get("backend") in runnable and set(entry.get("timings_ms", {})) == set(runnable):
        return entry["backend"], f"auto: tuned earlier, cached in {path} ({_fmt(entry['timings_ms'])})"
    shape = _tuning_shape(device, head_dim)
    timings = {}
    for name in runnable:
        cls = BACKENDS[name]
        backend = cls(device, dtype, head_dim, validate_options(name, cls.OPTIONS, {}))
        timings[name] = round(_time_backend(backend, shape) * 1e3, 3)
    best = min(timings, key=timings.get)
    tuning_cache.write(path, key, {"backend": best, "timings_ms": timings, "shape": list(shape)}, "attention autotune")
    return best, f"auto: fastest exact backend on [B, S, H, D] = {list(shape)} ({_fmt(timings)}), cached in {path}"


def _fmt(timings: dict) -> str:
    return ", ".join(f"{n} {t:.2f} ms" for n, t in sorted(timings.items(), key=lambda kv: kv[1]))
