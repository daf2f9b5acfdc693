"""``--attention-backend-config``: a JSON/YAML file path, a JSON object string, or ``k=v,k2=v2``
pairs, parsed into a dict and checked against the options the chosen backend declares.

An option is declared by a backend as ``Option(default, help, choices=...)``; its type is the
default's type (bool, int, float, str). An unknown key, a value of the wrong type or one
outside its choices is a ConfigError naming the key and what is accepted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from sglang_diffusion.errors import ConfigError

FLAG = "attention_backend_config"


@dataclass(frozen=True)
class Option:
    default: Any
    help: str
    choices: Optional[tuple] = None

    def coerce(self, key: str, value: Any) -> Any:
        kind = type(self.default)
        if kind is bool:
            if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                value = value.strip().lower() in ("1", "true", "yes", "on")
            if not isinstance(value, bool):
                raise ConfigError(f"{FLAG}: {key} must be true or false, got {value!r}")
        elif kind is int:
            if isinstance(value, str):
                try:
                    value = int(value)
                except ValueError:
                    pass
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(f"{FLAG}: {key} must be an integer, got {value!r}")
        elif kind is float:
            try:
                value = float(value) if not isinstance(value, bool) else None
            except (TypeError, ValueError):
                value = None
            if value is None:
                raise ConfigError(f"{FLAG}: {key} must be a number")
        elif kind is str and not isinstance(value, str):
            raise ConfigError(f"{FLAG}: {key} must be a string, got {value!r}")
        if self.choices is not None and value not in self.choices:
            raise ConfigError(f"{FLAG}: {key} must be one of {', '.join(map(str, self.choices))}, got {value!r}")
        return value


def _scalar(text: str) -> Any:
    """A k=v value: JSON scalars (1, 0.5, true, "x") as such, anything else as a string."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, (bool, int, float, str)) else text


def parse_backend_config(text: Optional[str]) -> dict[str, Any]:
    """The options in ``text`` (file path, JSON string or k=v pairs); {} for None or empty."""
    if text is None or not text.strip():
        return {}
    text = text.strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"{FLAG}: not valid JSON: {exc}") from None
    elif "=" not in text or Path(text).is_file():
        path = Path(text).expanduser()
        if not path.is_file():
            raise ConfigError(f"{FLAG}: {text!r} is neither a file, a JSON object nor k=v pairs")
        import yaml  # here: only a config file needs it

        try:
            content = path.read_text()
            data = json.loads(content) if path.suffix == ".json" else yaml.safe_load(content)
        except (OSError, ValueError, yaml.YAMLError) as exc:
            raise ConfigError(f"{FLAG}: cannot read {path}: {exc}") from None
        if data is None:
            data = {}
    else:
        data = {}
        for pair in text.split(","):
            key, sep, value = pair.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"{FLAG}: expected k=v pairs separated by commas, got {pair!r}")
            data[key.strip()] = _scalar(value.strip())
    if not isinstance(data, dict):
        raise ConfigError(f"{FLAG}: expected a mapping of option names to values, got {type(data).__name__}")
    return data


def validate_options(backend: str, declared: dict[str, Option], options: dict[str, Any]) -> dict[str, Any]:
    """Every declared option filled in (given or default); a ConfigError for an unknown key."""
    unknown = sorted(set(options) - set(declared))
    if unknown:
        accepted = ", ".join(sorted(declared)) or "none"
        raise ConfigError(f"{FLAG}: unknown option(s) {', '.join(unknown)} for attention backend "
                          f"{backend!r} (it accepts: {accepted})")
    return {key: opt.coerce(key, options[key]) if key in options else opt.default for key, opt in declared.items()}
