"""`option()`: a dataclass field that is also a CLI flag and a config-file key.

The field's name is the config key; the flag is the name with dashes (`dit_precision` ->
`--dit-precision`). Help text, choices and config-file aliases live in the field's
metadata, so `--help`, the parser and the config loader are all generated from one place.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence


def option(
    default: Any,
    help: str,
    *,
    choices: Sequence[str] | None = None,
    aliases: Sequence[str] = (),
    metavar: str | None = None,
    default_factory: Any = None,
    secret: bool = False,
    choice_flags: bool = False,
):
    """`secret`: a credential, kept out of the dataclass repr and of `--help`'s defaults.
    `choice_flags`: each choice is also a flag of its own (`--720p` = `--resolution 720p`)."""
    metadata = {"help": help, "choices": tuple(choices) if choices else None,
                "aliases": tuple(aliases), "metavar": metavar, "secret": secret, "choice_flags": choice_flags}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=metadata, repr=not secret)
    return dataclasses.field(default=default, metadata=metadata, repr=not secret)


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")
