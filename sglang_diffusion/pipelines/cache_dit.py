"""Cache-DiT on the diffusers backend.

Cache-DiT (the `cache-dit` package, `pip install 'sglang-diffusion[cache]'`) hooks the transformer
blocks of a diffusers pipeline. With its default DBCache policy the first `Fn_compute_blocks`
blocks always run; when their residual changed by less than `residual_diff_threshold` (relative
L1) since the last full step, the remaining blocks are skipped and their cached residual is
reused. The first `max_warmup_steps` steps are always computed.

The config file is Cache-DiT's own format, as `cache_dit.load_configs` reads it: a `cache_config`
section (or the same keys at the top level, Cache-DiT's older flat format), YAML or JSON:

    cache_config:
      Fn_compute_blocks: 8
      Bn_compute_blocks: 0
      max_warmup_steps: 8
      residual_diff_threshold: 0.08
      enable_taylorseer: true      # or enable_dmd / enable_foca: a calibrator for skipped steps

Its `parallelism_config`, `attention_backend` and `quantize_config` sections are refused: the
engine's own options own those.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sglang_diffusion.errors import ConfigError

logger = logging.getLogger(__name__)

MIN_VERSION = "1.5"  # the API read here (load_cache_config, DBCacheConfig, BlockAdapterRegister)
INSTALL_HINT = "pip install 'sglang-diffusion[cache]'"

# Sections of a Cache-DiT config that the engine configures itself, and where to do it instead.
_REFUSED_SECTIONS = {
    "parallelism_config": "parallelism is set with the engine's --num-gpus / --sp-degree options",
    "attention_backend": "the attention backend is set with --attention-backend or --diffusers-attention-backend",
    "quantize_config": "quantization through Cache-DiT is not supported",
}
_MAIN_KEYS = ("Fn_compute_blocks", "Bn_compute_blocks", "max_warmup_steps", "residual_diff_threshold")
# Calibrator keys that cache-dit's loader (load_cache_options_from_dict) reads beside the fields
# of the cache config dataclass.
_CALIBRATOR_KEYS = frozenset({
    "enable_taylorseer", "enable_encoder_taylorseer", "taylorseer_cache_type", "taylorseer_order",
    "enable_dmd", "enable_encoder_dmd", "calibrator_cache_type", "dmd_history", "dmd_rank", "dmd_ridge",
    "dmd_svd_precision", "enable_foca", "enable_encoder_foca",
})


@dataclass(frozen=True)
class CacheDitSettings:
    """What Cache-DiT runs with: cache-dit's own config objects and where they came from."""

    source: str  # the config file, or "cache-dit defaults"
    cache_config: Any  # cache_dit.DBCacheConfig or DBPruneConfig
    calibrator_config: Any | None  # a cache_dit CalibratorConfig (TaylorSeer, DMD, FoCa) or None

    def describe(self) -> str:
        """The main knobs, then every other option that differs from cache-dit's default."""
        config = self.cache_config
        default = type(config)()
        keys = [*_MAIN_KEYS, *(f.name for f in dataclasses.fields(config) if f.name not in _MAIN_KEYS
                               and f.name != "cache_type" and getattr(config, f.name) != getattr(default, f.name))]
        text = f"{config.cache_type} " + ", ".join(f"{k}={getattr(config, k)}" for k in keys)
        if self.calibrator_config is not None:
            text += f", calibrator {self.calibrator_config.strify(details=True)}"
        return f"{text} (from {self.source})"


def import_cache_dit():
    """The `cache_dit` module, or a ConfigError that says how to install it."""
    try:
        import cache_dit
    except ImportError as e:
        raise ConfigError(f"Cache-DiT needs the cache-dit package ({e}): {INSTALL_HINT}") from None
    from packaging.version import InvalidVersion, Version

    try:
        too_old = Version(cache_dit.__version__) < Version(MIN_VERSION)
    except InvalidVersion:
        too_old = False  # a source checkout without a version: let its API speak for itself
    if too_old:
        raise ConfigError(f"Cache-DiT: cache-dit {cache_dit.__version__} is installed, {MIN_VERSION} or "
                          f"newer is needed: {INSTALL_HINT} --upgrade")
    return cache_dit


def _read(path: str) -> dict:
    file = Path(path).expanduser()
    where = f"cache_dit_config {path}"
    try:
        text = file.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{where}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{where}: cannot be read ({e})") from None
    if file.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{where}: not valid JSON ({e})") from None
    else:
        import yaml

        try:
            data = yaml.safe_load(text)  # YAML also reads JSON
        except yaml.YAMLError as e:
            raise ConfigError(f"{where}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of Cache-DiT options, got "
                          f"{'an empty file' if data is None else type(data).__name__}")
    return data


def _check_keys(data: dict, where: str, cache_dit) -> None:
    """Unknown keys and wrong types fail here, naming the key: cache-dit ignores unknown keys
    and would meet a wrong type only in the middle of the first request."""
    if "cache_config" in data:
        section, prefix = data["cache_config"], "cache_config."
        if not isinstance(section, dict):
            raise ConfigError(f"{where}: cache_config must be a mapping, got {type(section).__name__}")
        others = [k for k in data if k != "cache_config"]
    else:
        section, prefix, others = data, "", []
    for key in [*others, *section]:
        if key in _REFUSED_SECTIONS:
            raise ConfigError(f"{where}: {key} is not taken here: {_REFUSED_SECTIONS[key]}")
    if others:
        raise ConfigError(f"{where}: unknown key {others[0]!r} (expected cache_config)")
    config_cls = cache_dit.DBPruneConfig if section.get("cache_type") == "DBPrune" else cache_dit.DBCacheConfig
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    for key, value in section.items():
        if key not in fields and key not in _CALIBRATOR_KEYS:
            known = ", ".join(sorted({*fields, *_CALIBRATOR_KEYS}))
            raise ConfigError(f"{where}: unknown key {prefix}{key} (known: {known})")
        default = fields[key].default if key in fields else None
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        else:
            ok = True  # optional fields and calibrator keys: cache-dit's loader checks them
        if not ok:
            raise ConfigError(f"{where}: {prefix}{key} must be a {type(default).__name__}, got {value!r}")


def load_cache_dit_config(path: str | None) -> CacheDitSettings:
    """Read and check a Cache-DiT config file; with no path, Cache-DiT's default DBCache config."""
    cache_dit = import_cache_dit()
    if path is None:
        return CacheDitSettings("cache-dit defaults", cache_dit.DBCacheConfig(), None)
    where = f"cache_dit_config {path}"
    data = _read(path)
    _check_keys(data, where, cache_dit)
    try:
        cache_config, calibrator_config = cache_dit.load_cache_config(data)
    except (ValueError, TypeError, AssertionError) as e:  # cache-dit checks its options with these
        raise ConfigError(f"{where}: {e}") from None
    # cache-dit's loader keeps the file's cache_type string; its adapter accepts only the enum
    if isinstance(cache_config.cache_type, str):
        cache_config.cache_type = cache_dit.CacheType(cache_config.cache_type)
    return CacheDitSettings(str(path), cache_config, calibrator_config)


@contextlib.contextmanager
def _cache_dit_logs_quiet():
    """cache-dit logs each step of adapting a pipeline at INFO on stdout, where the CLI prints its
    result; keep them to warnings unless our own log level is debug."""
    if logger.isEnabledFor(logging.DEBUG):
        yield
        return
    names = [n for n in list(logging.Logger.manager.loggerDict) if n == "cache_dit" or n.startswith("cache_dit.")]
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _block_lists(blocks) -> list:
    if isinstance(blocks, torch.nn.ModuleList):
        return [blocks]
    if isinstance(blocks, (list, tuple)):
        return [b for item in blocks for b in _block_lists(item)]
    return []


def _check_block_counts(cache_dit, pipe, settings: CacheDitSettings) -> None:
    """cache-dit checks Fn/Bn_compute_blocks against each list of blocks it caches only when the
    first request runs; check them now, with the lists its adapter for this pipeline names."""
    adapter = cache_dit.BlockAdapterRegister.get_adapter(pipe, skip_post_init=True)  # no patching yet
    sizes = [len(b) for b in _block_lists(getattr(adapter, "blocks", None))]
    if not sizes:
        return
    config = settings.cache_config
    for key in ("Fn_compute_blocks", "Bn_compute_blocks"):
        value = getattr(config, key)
        if value is not None and value > min(sizes):
            raise ConfigError(f"Cache-DiT ({settings.source}): {key}={value} is more than the {min(sizes)} "
                              f"transformer blocks {type(pipe).__name__} caches together; set a smaller "
                              f"{key} in a --cache-dit-config file")


def enable_cache_dit(pipe, config_path: str | None) -> CacheDitSettings:
    """Apply Cache-DiT to a diffusers pipeline, in place; returns what it runs with."""
    cache_dit = import_cache_dit()
    settings = load_cache_dit_config(config_path)
    name = type(pipe).__name__
    if not cache_dit.BlockAdapterRegister.is_supported(pipe):
        _, prefixes = cache_dit.supported_pipelines()
        raise ConfigError(f"Cache-DiT cannot adapt {name}: cache-dit {cache_dit.__version__} knows the "
                          f"pipelines whose class name starts with {', '.join(sorted(prefixes))}")
    # cache-dit checks its options with these; the adapter of a pipeline whose name it knows but
    # whose transformer it cannot read fails with AttributeError or AssertionError.
    adapt_errors = (ValueError, AssertionError, AttributeError, TypeError)
    with _cache_dit_logs_quiet():
        try:
            _check_block_counts(cache_dit, pipe, settings)
        except adapt_errors as e:
            raise ConfigError(f"Cache-DiT cannot adapt {name}: {e}") from None
        # cache-dit wraps `type(pipe).__call__`: every later pipeline of that class in this process
        # would run inside this one's cache contexts, and the wrapper would keep this pipeline's
        # weights alive. A subclass of our own keeps both with this pipeline; it keeps the name, by
        # which cache-dit finds its block adapter.
        cls = type(pipe)
        pipe.__class__ = type(cls.__name__, (cls,), {"__module__": cls.__module__, "__qualname__": cls.__qualname__})
        try:
            cache_dit.enable_cache(pipe, cache_config=settings.cache_config,
                                   calibrator_config=settings.calibrator_config)
        except adapt_errors as e:
            pipe.__class__ = cls
            raise ConfigError(f"Cache-DiT cannot adapt {name}: {e}") from None
    logger.info("Cache-DiT on: %s", settings.describe())
    return settings
