"""argparse, generated from the config dataclasses: one flag per field, help and default from
the field's metadata. Every option defaults to "not given" (SUPPRESS), so that the values
that reach `config.loading` are exactly the ones typed, and precedence stays exact."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Sequence

from sglang_diffusion.config import loading
from sglang_diffusion.config.fields import flag_name
from sglang_diffusion.config.sampling_params import SamplingParams
from sglang_diffusion.config.server_args import ServerArgs
from sglang_diffusion.errors import ConfigError


class ArgumentParser(argparse.ArgumentParser):
    """Raises ConfigError instead of printing usage and exiting, so every mistake takes one path."""

    def error(self, message):
        raise ConfigError(message)


def _default_text(f: dataclasses.Field) -> str:
    if f.metadata["secret"]:
        return ""
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    if default is None or default == [] or default == {}:
        return ""
    if dataclasses.is_dataclass(default):
        default = ",".join(f"{k}={v}" for k, v in dataclasses.asdict(default).items() if v is not None)
    if isinstance(default, bool):
        default = str(default).lower()
    return f" (default: {default})"


def _add_fields(group, cls) -> None:
    for name, (f, annotation) in loading._fields(cls).items():
        meta = f.metadata
        flags = [flag_name(name)] + [flag_name(a) for a in meta["aliases"]]
        base, _ = loading._base_type(annotation)
        help_text = meta["help"] + _default_text(f)
        kwargs = dict(dest=name, default=argparse.SUPPRESS, help=help_text)
        if base is bool:
            group.add_argument(*flags, action=argparse.BooleanOptionalAction, **kwargs)
            continue
        if meta["choices"] and base is not list:
            kwargs["choices"] = meta["choices"]
        if loading.takes_list(annotation):  # `str | list[str]`: several values, or the flag repeated
            kwargs.update(action="extend", nargs="+")
        if base is list:
            kwargs["nargs"] = "+"
            kwargs["metavar"] = "{" + ",".join(meta["choices"]) + "}" if meta["choices"] else "VALUE"
        else:
            choices = meta["choices"]
            kwargs["metavar"] = meta["metavar"] or ("{" + ",".join(choices) + "}" if choices else name.upper())
        group.add_argument(*flags, **kwargs)
        for choice in meta["choices"] if meta.get("choice_flags") else ():
            group.add_argument(f"--{choice}", dest=name, action="store_const", const=choice, default=argparse.SUPPRESS,
                               help=f"{flag_name(name)} {choice}")


def build_parser(prog: str, description: str, *, sampling: bool) -> ArgumentParser:
    parser = ArgumentParser(
        prog=prog, description=description, allow_abbrev=False,
        epilog="Any component of the model's model_index.json can be replaced with "
               "--<component>-path PATH (e.g. --vae-path, --text-encoder-2-path): a Hugging Face id "
               "or a complete component folder (config.json + safetensors).")
    parser.add_argument("--config", default=argparse.SUPPRESS, metavar="FILE",
                        help="JSON or YAML file of the same keys as these options; "
                             "options given on the command line win.")
    _add_fields(parser.add_argument_group("server arguments"), ServerArgs)
    if sampling:
        _add_fields(parser.add_argument_group("sampling parameters"), SamplingParams)
    return parser


def _leftovers_to_dict(leftovers: Sequence[str]) -> dict[str, str]:
    """`--vae-path X` / `--vae-path=X` become {"vae_path": "X"}; anything else is an unknown option."""
    out: dict[str, str] = {}
    it = iter(leftovers)
    for token in it:
        if not token.startswith("--"):
            raise ConfigError(f"unexpected argument {token!r}")
        name, eq, value = token[2:].partition("=")
        key = name.replace("-", "_")
        if not eq:
            value = next(it, None)
            if value is None or (value.startswith("--") and key.endswith(loading.COMPONENT_PATH_SUFFIX)):
                if key.endswith(loading.COMPONENT_PATH_SUFFIX):
                    raise ConfigError(f"--{name}: expected a path")
                value = None
        out[key] = value
    return out


def parse(parser: ArgumentParser, argv: Sequence[str]):
    """argv -> (ServerArgs, SamplingParams) with file < command line precedence."""
    ns, leftovers = parser.parse_known_args(list(argv))
    given = dict(vars(ns))
    config_file = given.pop("config", None)
    extra = _leftovers_to_dict(leftovers)
    for key in extra:
        if not key.endswith(loading.COMPONENT_PATH_SUFFIX):
            loading.normalize({key: None}, from_cli=True, source="command line")
    cli_values = loading.normalize({**given, **extra}, from_cli=True, source="command line")
    file_values = loading.load_config_file(config_file) if config_file else {}
    return loading.build_args(loading.merge(file_values, cli_values))
