"""Logging set-up for the entry points (the library itself only uses `logging.getLogger`).

One format for everything a command prints to the log: our loggers and uvicorn's (its server
and access lines), so that `sglang serve` writes one kind of line. The access log leaves out
what clients poll (GET /health, a video job's status, an image request's progress) unless the
level is debug: a client polling every second would bury every other line.
"""

from __future__ import annotations

import logging
import re
import sys

_LOGGERS = ("sglang_diffusion", "uvicorn")
# uvicorn.access records: args = (client, method, path with query, HTTP version, status)
_POLLS = re.compile(r"^(/health|/v1/videos/[^/]+|/v1/images/progress/[^/]+)$")


class QuietPolls(logging.Filter):
    """Drops the access-log lines of successful status polls and health checks."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if not (isinstance(args, tuple) and len(args) == 5):
            return True
        _, method, path, _, status = args
        return not (method in ("GET", "HEAD") and isinstance(status, int) and status < 400
                    and _POLLS.match(str(path).split("?", 1)[0]))


def configure_logging(level: str = "info", prefix: str = "") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{prefix}%(asctime)s %(levelname)s %(name)s: %(message)s",
                                           datefmt="%H:%M:%S"))
    for name in _LOGGERS:
        root = logging.getLogger(name)
        root.handlers[:] = [handler]
        root.setLevel(level.upper())
        root.propagate = False
    access = logging.getLogger("uvicorn.access")
    access.filters[:] = [] if level.lower() == "debug" else [QuietPolls()]
    if not sys.stderr.isatty():
        from huggingface_hub.utils import disable_progress_bars  # transformers follows it when imported after

        disable_progress_bars()
