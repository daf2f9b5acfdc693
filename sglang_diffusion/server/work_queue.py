"""The bounded queue in front of the Engine.

The Engine serves one request at a time; a single worker thread feeds it in arrival order, so
the event loop never blocks on a generation. At most `max_pending` requests wait: one more is
refused at once (429, with a Retry-After estimated from recent service times) rather than piling
up an unbounded backlog. Control operations (LoRA) go through the same thread, so they run
between requests and in order, but are not counted against the bound.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from concurrent.futures import Future
from typing import Callable, TypeVar

logger = logging.getLogger(__name__)
T = TypeVar("T")

_EWMA = 0.3  # weight of the newest service time in the running estimate


class QueueFull(Exception):
    def __init__(self, retry_after_s: int):
        super().__init__(f"the queue is full; retry in about {retry_after_s} s")
        self.retry_after_s = retry_after_s


class Draining(Exception):
    """The server is shutting down and takes no new work."""


class WorkQueue:
    def __init__(self, max_pending: int, on_depth: Callable[[int], None] | None = None):
        self.max_pending = max_pending
        self._on_depth = on_depth or (lambda depth: None)
        self._items: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._pending = 0  # bounded items waiting (not the one running)
        self._service_s = 1.0
        self.draining = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="engine-feeder", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        return self._pending

    def retry_after_s(self) -> int:
        return max(1, math.ceil(self._service_s * (self._pending + 1)))

    def submit(self, fn: Callable[[], T], *, bounded: bool = True) -> Future:
        """Queue `fn` for the worker thread; its Future holds the result. A pending Future can be
        cancelled (`Future.cancel()`), and then never runs."""
        if self.draining.is_set():
            raise Draining()
        future: Future = Future()
        with self._lock:
            if bounded:
                if self._pending >= self.max_pending:
                    raise QueueFull(self.retry_after_s())
                self._pending += 1
                self._on_depth(self._pending)
        self._items.put((fn, future, bounded))
        return future

    def _loop(self) -> None:
        while True:
            item = self._items.get()
            if item is None:
                return
            fn, future, bounded = item
            if bounded:
                with self._lock:
                    self._pending -= 1
                    self._on_depth(self._pending)
            if not future.set_running_or_notify_cancel():
                continue
            start = time.perf_counter()
            try:
                result = fn()
            except BaseException as e:  # handed to whoever awaits the future
                future.set_exception(e)
            else:
                future.set_result(result)
            if bounded:
                self._service_s += _EWMA * (time.perf_counter() - start - self._service_s)

    def stop(self, timeout: float | None = None) -> None:
        """Take no new work, finish what is queued (work can check `draining` to cut itself
        short) and stop the worker thread."""
        self.draining.set()
        self._items.put(None)
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.warning("the engine is still busy after %.0f s of draining; exiting anyway", timeout)
