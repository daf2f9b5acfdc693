"""Live progress of image requests. An image request answers only when its images are done, so
a client that wants a progress bar names the request itself (`X-Progress-Id: <its own id>`) and
polls `GET /v1/images/progress/{id}` meanwhile; the entry lives exactly while the request does.
(Video jobs carry their progress in the job record.)"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass

from sglang_diffusion.server.errors import APIError

HEADER = "X-Progress-Id"
_PATTERN = r"^[A-Za-z0-9_-]{8,64}$"
_ID = re.compile(_PATTERN)
# `openapi_extra` parameters of the routes that take the header
OPENAPI_PARAMETERS = [{"name": HEADER, "in": "header", "required": False, "schema": {"type": "string",
                       "pattern": _PATTERN}, "description": "An id of the client's choosing: while the request "
                       "is in flight, GET /v1/images/progress/{id} reports its denoising steps."}]


@dataclass
class Progress:
    status: str = "queued"  # then "in_progress" once the engine takes the request
    done: int = 0  # denoising steps done
    total: int | None = None  # steps in all; None until the first step ends (the prompt is being encoded)

    def percent(self) -> int:
        return min(99, self.done * 100 // self.total) if self.total else 0


class ProgressBoard:
    """Thread-safe: the event loop adds and removes entries, the engine's thread updates them."""

    def __init__(self):
        self._entries: dict[str, Progress] = {}
        self._lock = threading.Lock()

    def start(self, progress_id: str) -> Progress:
        if not _ID.fullmatch(progress_id):
            raise APIError(400, f"{HEADER}: 8 to 64 letters, digits, '-' or '_', got {progress_id[:80]!r}",
                           param=HEADER, code="invalid_value")
        with self._lock:
            if progress_id in self._entries:
                raise APIError(409, f"{HEADER} {progress_id!r} names a request still in flight: use a fresh id",
                               param=HEADER, code="progress_id_in_use")
            entry = self._entries[progress_id] = Progress()
        return entry

    def update(self, entry: Progress, done: int = 0, total: int | None = None) -> None:
        """The engine took the request (no arguments), or `done` of `total` steps are done."""
        with self._lock:
            entry.status, entry.done, entry.total = "in_progress", done, total

    def finish(self, progress_id: str | None) -> None:
        with self._lock:
            self._entries.pop(progress_id, None)

    def get(self, progress_id: str) -> Progress | None:
        with self._lock:
            entry = self._entries.get(progress_id)
            return None if entry is None else Progress(entry.status, entry.done, entry.total)
