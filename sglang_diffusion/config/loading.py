"""Turning argv and config files into `ServerArgs` + `SamplingParams`.

Precedence, lowest to highest: global defaults (the dataclasses), the model family's
defaults (applied later, by `SamplingParams.resolve`), the `--config` file, the command
line. Only keys the user actually gave are carried, so each layer overrides exactly what
it names. Every bad key or value becomes a `ConfigError` that names it.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import typing
from pathlib import Path
from typing import Any

from sglang_diffusion.config.cache import CacheDitParams, apply_cache_dit_mapping, cache_dit_params_from_env
from sglang_diffusion.config.sampling_params import SamplingParams
from sglang_diffusion.config.server_args import ServerArgs, VaeConfig
from sglang_diffusion.errors import ConfigError

COMPONENT_PATH_SUFFIX = "_path"


def _fields(cls) -> dict[str, tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(cls)
    return {f.name: (f, hints[f.name]) for f in dataclasses.fields(cls)}


SERVER_FIELDS = _fields(ServerArgs)
SAMPLING_FIELDS = _fields(SamplingParams)
VAE_FIELDS = _fields(VaeConfig)
ALL_FIELDS = {**SERVER_FIELDS, **SAMPLING_FIELDS}
ALIASES = {alias: name for name, (f, _) in ALL_FIELDS.items() for alias in f.metadata["aliases"]}


def did_you_mean(key: str, candidates) -> str:
    match = difflib.get_close_matches(key, list(candidates), n=1, cutoff=0.6)
    return f"; did you mean '{match[0]}'?" if match else ""


def _base_type(annotation):
    """`int | None` -> (int, True); `int | list[int]` -> (int, False); `list` -> (list, False)."""
    args = typing.get_args(annotation)
    if type(None) in args or takes_list(annotation):
        rest = [a for a in args if a is not type(None)]
        return rest[0], type(None) in args
    return annotation, False


def takes_list(annotation) -> bool:
    """`str | list[str] | None`, `int | list[int]`: a field that takes one value or several."""
    return any(typing.get_origin(a) is list for a in typing.get_args(annotation))


def _parse_pairs_or_json(text: str, what: str) -> dict:
    """A JSON object, or k=v,k2=v2 pairs with JSON-ish values."""
    text = text.strip()
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{what}: not valid JSON ({e.msg} at position {e.pos})") from None
        if not isinstance(value, dict):
            raise ConfigError(f"{what}: expected a JSON object")
        return value
    import yaml  # here: its import is a measurable part of a generate's start-up

    out = {}
    for pair in filter(None, (p.strip() for p in text.split(","))):
        if "=" not in pair:
            raise ConfigError(f"{what}: expected a JSON object or k=v pairs, got {pair!r}")
        k, v = (s.strip() for s in pair.split("=", 1))
        out[k] = yaml.safe_load(v) if v else ""
    return out


def coerce(key: str, value: Any, annotation, *, from_cli: bool, where: str) -> Any:
    """Check (and, for command-line strings, convert) one value against its field type."""
    base, optional = _base_type(annotation)
    if value is None or (from_cli and optional and value in ("none", "null", "None")):
        if optional:
            return None
        raise ConfigError(f"{where}: a value is required")
    if base is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if base is int:
        if takes_list(annotation) and isinstance(value, list) and value:
            items = [coerce(key, v, int, from_cli=from_cli, where=where) for v in value]
            return items[0] if len(items) == 1 else items  # `int | list[int]`: one value stays an int
        if from_cli and isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if base is float:
        if takes_list(annotation) and isinstance(value, list) and value:
            items = [coerce(key, v, float, from_cli=from_cli, where=where) for v in value]
            return items[0] if len(items) == 1 else items  # `float | list[float]`: one value stays a float
        if from_cli and isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if base is str:
        if isinstance(value, str):
            return value
        if takes_list(annotation) and isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            return value[0] if len(value) == 1 else value  # `str | list[str]`: one value stays a string
        raise ConfigError(f"{where}: expected a string{' or a list of strings' if takes_list(annotation) else ''}, "
                          f"got {value!r}")
    if base is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
        raise ConfigError(f"{where}: expected a list of strings, got {value!r}")
    if base is dict:
        if from_cli and isinstance(value, str):
            value = _parse_pairs_or_json(value, where)
        if isinstance(value, dict):
            return value
        raise ConfigError(f"{where}: expected a mapping, got {value!r}")
    if base is CacheDitParams:
        if isinstance(value, CacheDitParams):
            return value
        if from_cli and isinstance(value, str):
            value = _parse_pairs_or_json(value, where)
        return apply_cache_dit_mapping(value, cache_dit_params_from_env(), where)
    if base is VaeConfig:
        if isinstance(value, VaeConfig):
            return value
        if from_cli and isinstance(value, str):
            value = _parse_pairs_or_json(value, where)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of VAE options, got {value!r}")
        kwargs = {}
        for k, v in value.items():
            if k not in VAE_FIELDS:
                raise ConfigError(f"{where}: unknown VAE option '{k}'{did_you_mean(k, VAE_FIELDS)} "
                                  f"(valid: {', '.join(VAE_FIELDS)})")
            nested = f"{where[:-1]}.{k}'" if where.endswith("'") else f"{where}.{k}"
            kwargs[k] = coerce(k, v, VAE_FIELDS[k][1], from_cli=False, where=nested)
        return VaeConfig(**kwargs)
    raise AssertionError(f"unhandled field type {annotation!r} for {key}")


def normalize(values: dict[str, Any], *, from_cli: bool, source: str) -> dict[str, Any]:
    """Map aliases and `<component>_path` keys, reject unknown keys, coerce every value."""
    out: dict[str, Any] = {}
    components: dict[str, str] = {}
    for raw_key, value in values.items():
        key = ALIASES.get(raw_key, raw_key)
        where = f"--{key.replace('_', '-')}" if from_cli else f"config key '{raw_key}'"
        if key in ALL_FIELDS:
            if key in out:
                raise ConfigError(f"{source}: {key} is given twice (as '{raw_key}' and under another name); "
                                  "use one")
            try:
                out[key] = coerce(key, value, ALL_FIELDS[key][1], from_cli=from_cli, where=where)
            except ConfigError as e:
                raise ConfigError(str(e) if from_cli else f"{e} (in {source})") from None
        elif key.endswith(COMPONENT_PATH_SUFFIX) and len(key) > len(COMPONENT_PATH_SUFFIX):
            components[key[: -len(COMPONENT_PATH_SUFFIX)]] = coerce(key, value, str, from_cli=from_cli,
                                                                    where=where)
        else:
            known = list(ALL_FIELDS) + list(ALIASES)
            if from_cli:
                flag = "--" + raw_key.replace("_", "-")
                raise ConfigError(f"unknown option {flag}"
                                  f"{did_you_mean(flag, ['--' + k.replace('_', '-') for k in known])}")
            raise ConfigError(f"unknown config key '{raw_key}' in {source}{did_you_mean(raw_key, known)}")
    if components:
        out["component_paths"] = {**out.get("component_paths", {}), **components}
    return out


def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a JSON or YAML config file into normalized, type-checked values."""
    p = Path(path).expanduser()
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read config file {str(p)!r}: {e.strerror}") from None
    import yaml

    try:
        if p.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            data = yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"config file {str(p)!r} is not valid {'JSON' if p.suffix == '.json' else 'YAML'}: "
                          f"{e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(p)!r} must hold a mapping of keys to values")
    return normalize(data, from_cli=False, source=str(p))


def merge(*layers: dict[str, Any]) -> dict[str, Any]:
    """Later layers win; component_paths merge key by key."""
    out: dict[str, Any] = {}
    for layer in layers:
        for k, v in layer.items():
            if k == "component_paths":
                out[k] = {**out.get(k, {}), **v}
            else:
                out[k] = v
    return out


def build_args(values: dict[str, Any]) -> tuple[ServerArgs, SamplingParams]:
    server = ServerArgs(**{k: v for k, v in values.items() if k in SERVER_FIELDS})
    sampling = SamplingParams(**{k: v for k, v in values.items() if k in SAMPLING_FIELDS})
    return server, sampling


def server_args_from_kwargs(kwargs: dict[str, Any]) -> ServerArgs:
    """For the Python API: keyword arguments checked like config-file keys."""
    values = normalize(kwargs, from_cli=False, source="keyword arguments")
    stray = [k for k in values if k in SAMPLING_FIELDS]
    if stray:
        raise ConfigError(f"{', '.join(stray)}: sampling parameters belong to generate(), not to the engine")
    return ServerArgs(**values)


def sampling_params_from_kwargs(kwargs: dict[str, Any]) -> SamplingParams:
    values = normalize(kwargs, from_cli=False, source="keyword arguments")
    stray = [k for k in values if k in SERVER_FIELDS]
    if stray:
        raise ConfigError(f"{', '.join(stray)}: engine options belong to from_pretrained(), not generate()")
    return SamplingParams(**values)
