"""Step-caching options of the native pipelines: Cache-DiT's DBCache knobs with TaylorSeer and
step computation masks (SCM), per expert.

Where a value comes from, lowest to highest: the defaults below (SGLang diffusion's), the
`SGLANG_CACHE_DIT_*` environment variables (read when `ServerArgs` is built), the
`cache_dit_params` key / `--cache-dit-params`, the `--cache-dit-config` file. A second expert
(Wan2.2's low-noise one) takes the first's values except where `SGLANG_CACHE_DIT_SECONDARY_*`
or the `secondary_cache_config` section set them.

Keys (in a file under `cache_config:` or at the top level; the second expert's under
`secondary_cache_config:`), with their variables:

    Fn_compute_blocks            SGLANG_CACHE_DIT_FN                first blocks always computed
    Bn_compute_blocks            SGLANG_CACHE_DIT_BN                last blocks always computed
    max_warmup_steps             SGLANG_CACHE_DIT_WARMUP            first steps always computed
    residual_diff_threshold      SGLANG_CACHE_DIT_RDT               reuse while the first blocks' residual
                                                                    changed by less (relative L1)
    max_continuous_cached_steps  SGLANG_CACHE_DIT_MC                cap on cached steps in a row (-1: none)
    enable_taylorseer            SGLANG_CACHE_DIT_TAYLORSEER        extrapolate the cached residual
    taylorseer_order             SGLANG_CACHE_DIT_TS_ORDER          1 or 2
    scm_preset                   SGLANG_CACHE_DIT_SCM_PRESET        none, slow, medium, fast, ultra
    scm_compute_bins             SGLANG_CACHE_DIT_SCM_COMPUTE_BINS  e.g. 8,3,3,2 (steps computed in a row)
    scm_cache_bins               SGLANG_CACHE_DIT_SCM_CACHE_BINS    e.g. 1,2,2 (steps cached in a row)
    scm_policy                   SGLANG_CACHE_DIT_SCM_POLICY        dynamic (threshold decides) or static
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sglang_diffusion.errors import ConfigError

ENV_PREFIX = "SGLANG_CACHE_DIT_"
SECONDARY_ENV_PREFIX = "SGLANG_CACHE_DIT_SECONDARY_"
SCM_PRESETS = ("none", "slow", "medium", "fast", "ultra")
SCM_POLICIES = ("dynamic", "static")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


@dataclass(frozen=True)
class DBCacheParams:
    """One expert's DBCache settings (see the module docstring for each key)."""

    Fn_compute_blocks: int = 1
    Bn_compute_blocks: int = 0
    max_warmup_steps: int = 4
    residual_diff_threshold: float = 0.24
    max_continuous_cached_steps: int = 3
    enable_taylorseer: bool = False
    taylorseer_order: int = 1
    scm_preset: str = "none"
    scm_compute_bins: tuple[int, ...] | None = None
    scm_cache_bins: tuple[int, ...] | None = None
    scm_policy: str = "dynamic"

    def describe(self) -> str:
        text = (f"F{self.Fn_compute_blocks}B{self.Bn_compute_blocks} warmup {self.max_warmup_steps} "
                f"rdt {self.residual_diff_threshold:g} mc {self.max_continuous_cached_steps}")
        if self.enable_taylorseer:
            text += f", TaylorSeer order {self.taylorseer_order}"
        if self.scm_compute_bins is not None:
            text += f", SCM bins {list(self.scm_compute_bins)}/{list(self.scm_cache_bins)} {self.scm_policy}"
        elif self.scm_preset != "none":
            text += f", SCM {self.scm_preset} {self.scm_policy}"
        return text


# key -> the suffix of its environment variable; the second expert has the guide's first seven
ENV_NAMES = {"Fn_compute_blocks": "FN", "Bn_compute_blocks": "BN", "max_warmup_steps": "WARMUP",
             "residual_diff_threshold": "RDT", "max_continuous_cached_steps": "MC",
             "enable_taylorseer": "TAYLORSEER", "taylorseer_order": "TS_ORDER", "scm_preset": "SCM_PRESET",
             "scm_compute_bins": "SCM_COMPUTE_BINS", "scm_cache_bins": "SCM_CACHE_BINS", "scm_policy": "SCM_POLICY"}
SECONDARY_KEYS = ("Fn_compute_blocks", "Bn_compute_blocks", "max_warmup_steps", "residual_diff_threshold",
                  "max_continuous_cached_steps", "enable_taylorseer", "taylorseer_order")
_KEYS = tuple(f.name for f in dataclasses.fields(DBCacheParams))


@dataclass(frozen=True)
class CacheDitParams:
    """DBCache settings of the first expert, and what the second one sets differently."""

    primary: DBCacheParams = field(default_factory=DBCacheParams)
    secondary_overrides: tuple[tuple[str, Any], ...] = ()  # (key, value) pairs

    @property
    def secondary(self) -> DBCacheParams:
        return dataclasses.replace(self.primary, **dict(self.secondary_overrides))

    def for_expert(self, index: int) -> DBCacheParams:
        return self.primary if index == 0 else self.secondary


# ---- one value -----------------------------------------------------------------------------


def _value(key: str, raw: Any, where: str) -> Any:
    """Check (and convert, for strings of environment variables) one value of `key`."""
    kind = {f.name: f.type for f in dataclasses.fields(DBCacheParams)}[key]
    text = raw.strip() if isinstance(raw, str) else None
    if kind == "bool":
        if isinstance(raw, bool):
            return raw
        if text is not None and text.lower() in _TRUE + _FALSE:
            return text.lower() in _TRUE
        raise ConfigError(f"{where}: expected true or false, got {raw!r}")
    if kind == "int":
        try:
            value = int(text) if text is not None else raw
        except ValueError:
            value = None
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {raw!r}")
        return value
    if kind == "float":
        try:
            value = float(text) if text is not None else raw
        except ValueError:
            value = None
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {raw!r}")
        return float(value)
    if kind == "str":
        if text is None:
            raise ConfigError(f"{where}: expected a string, got {raw!r}")
        return text.lower()
    # bins: "8,3,3" or a list of positive integers; empty or none: not set
    if raw is None or (text is not None and text.lower() in ("", "none", "null")):
        return None
    items = [s.strip() for s in text.split(",")] if text is not None else raw
    try:
        if not isinstance(items, (list, tuple)):
            raise ValueError
        bins = tuple(int(b) if isinstance(b, str) else b for b in items)
        if not bins or any(not isinstance(b, int) or isinstance(b, bool) or b < 1 for b in bins):
            raise ValueError
    except ValueError:
        raise ConfigError(f"{where}: expected comma-separated positive step counts like 8,3,3,2, got {raw!r}") from None
    return bins


def validate_dbcache(p: DBCacheParams, where: str) -> None:
    checks = [
        (p.Fn_compute_blocks >= 1, "Fn_compute_blocks must be at least 1 (its residual decides the reuse)"),
        (p.Bn_compute_blocks >= 0, "Bn_compute_blocks must not be negative"),
        (p.max_warmup_steps >= 0, "max_warmup_steps must not be negative"),
        (p.residual_diff_threshold >= 0, "residual_diff_threshold must not be negative"),
        (p.max_continuous_cached_steps >= -1, "max_continuous_cached_steps must be -1 (no cap) or more"),
        (p.taylorseer_order in (1, 2), f"taylorseer_order must be 1 or 2, got {p.taylorseer_order}"),
        (p.scm_preset in SCM_PRESETS, f"scm_preset must be one of {', '.join(SCM_PRESETS)}, got {p.scm_preset!r}"),
        (p.scm_policy in SCM_POLICIES, f"scm_policy must be one of {', '.join(SCM_POLICIES)}, got {p.scm_policy!r}"),
        ((p.scm_compute_bins is None) == (p.scm_cache_bins is None),
         "scm_compute_bins and scm_cache_bins go together: give both or neither"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(f"{where}: {message}")
    if p.scm_compute_bins is not None and len(p.scm_compute_bins) not in (len(p.scm_cache_bins),
                                                                          len(p.scm_cache_bins) + 1):
        raise ConfigError(f"{where}: scm_compute_bins alternate with scm_cache_bins (compute, cache, compute...): "
                          f"{len(p.scm_compute_bins)} compute bins need {len(p.scm_compute_bins) - 1} or "
                          f"{len(p.scm_compute_bins)} cache bins, got {len(p.scm_cache_bins)}")


# ---- sources -------------------------------------------------------------------------------


def cache_dit_params_from_env() -> CacheDitParams:
    """The defaults with the `SGLANG_CACHE_DIT_*` variables set in this process applied."""
    values, secondary = {}, {}
    for key, name in ENV_NAMES.items():
        raw = os.environ.get(ENV_PREFIX + name)
        if raw is not None and raw.strip():
            values[key] = _value(key, raw, ENV_PREFIX + name)
    for key in SECONDARY_KEYS:
        raw = os.environ.get(SECONDARY_ENV_PREFIX + ENV_NAMES[key])
        if raw is not None and raw.strip():
            secondary[key] = _value(key, raw, SECONDARY_ENV_PREFIX + ENV_NAMES[key])
    return _checked(DBCacheParams(**values), secondary, "SGLANG_CACHE_DIT_* environment variables")


def _section(data: Any, where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of cache options, got {type(data).__name__}")
    out = {}
    for key, raw in data.items():
        if key not in _KEYS:
            match = difflib.get_close_matches(str(key), _KEYS, n=1, cutoff=0.6)
            hint = f"; did you mean {match[0]!r}?" if match else f" (known: {', '.join(_KEYS)})"
            raise ConfigError(f"{where}: unknown key {key!r}{hint}")
        out[key] = _value(key, raw, f"{where}.{key}")
    return out


def apply_cache_dit_mapping(data: Any, base: CacheDitParams, where: str) -> CacheDitParams:
    """`base` with the keys of `data` applied: `cache_config` (or the keys at the top level) for
    every expert, `secondary_cache_config` for the second."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of cache options, got {type(data).__name__}")
    sections = {"cache_config", "secondary_cache_config"}
    if sections & data.keys():
        stray = [k for k in data if k not in sections]
        if stray:
            raise ConfigError(f"{where}: unknown key {stray[0]!r} beside cache_config (expected cache_config, "
                              "secondary_cache_config)")
        primary = _section(data.get("cache_config", {}), f"{where}: cache_config")
        secondary = _section(data.get("secondary_cache_config", {}), f"{where}: secondary_cache_config")
    else:
        primary, secondary = _section(data, where), {}
    overrides = {**dict(base.secondary_overrides), **secondary}
    return _checked(dataclasses.replace(base.primary, **primary), overrides, where)


def load_cache_dit_file(path: str, base: CacheDitParams) -> CacheDitParams:
    """`base` with a `--cache-dit-config` YAML/JSON file applied."""
    import yaml

    file = Path(path).expanduser()
    where = f"cache_dit_config {path}"
    try:
        text = file.read_text()
    except OSError as e:
        raise ConfigError(f"{where}: cannot be read ({e.strerror or e})") from None
    try:
        data = json.loads(text) if file.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"{where}: not valid {'JSON' if file.suffix.lower() == '.json' else 'YAML'} ({e})") from None
    return apply_cache_dit_mapping({} if data is None else data, base, where)


def _checked(primary: DBCacheParams, secondary: dict[str, Any], where: str) -> CacheDitParams:
    params = CacheDitParams(primary, tuple(sorted(secondary.items())))
    validate_dbcache(params.primary, where)
    validate_dbcache(params.secondary, f"{where} (second expert)")
    return params
