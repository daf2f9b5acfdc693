"""`sglang serve`: options are parsed and validated; the HTTP server itself has not landed."""

from __future__ import annotations

from typing import Sequence

from sglang_diffusion.cli.args import build_parser, parse
from sglang_diffusion.errors import NotSupportedYetError


def run(argv: Sequence[str]) -> int:
    parser = build_parser("sglang serve", "Start the OpenAI-compatible HTTP server.", sampling=False)
    parse(parser, argv)
    raise NotSupportedYetError("not supported yet: the HTTP server (sglang serve); use sglang generate "
                               "or the Python API (sglang_diffusion.api.DiffGenerator)")
