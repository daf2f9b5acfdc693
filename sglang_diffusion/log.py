"""Logging set-up for the entry points (the library itself only uses `logging.getLogger`)."""

from __future__ import annotations

import logging
import sys


def configure_logging(level: str = "info", prefix: str = "") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{prefix}%(asctime)s %(levelname)s %(name)s: %(message)s",
                                           datefmt="%H:%M:%S"))
    root = logging.getLogger("sglang_diffusion")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
