"""The bounded queue in front of the Engine.

Worker threads feed the Engine in arrival order, so the event loop never blocks on a
generation: one thread when the engine runs one request at a time, `workers` (its batch size)
when it batches, so that that many requests can meet in its batcher. At most `max_pending`
requests wait here: one more is refused at once (429, with a Retry-After estimated from recent
service times) rather than piling up an unbounded backlog. Control operations (LoRA) are not
counted against the bound and run alone: after every item taken before them has finished, and
before any item behind them starts.
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
    def __init__(self, max_pending: int, on_depth: Callable[[int], None] | None = None, workers: int = 1):
        self.max_pending = max_pending
        self._on_depth = on_depth or (lambda depth: None)
        self._items: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._pending = 0  # bounded items waiting (not the ones running)
        self._service_s = 1.0
        self._taking = threading.Lock()  # held by the worker taking the next item (and by a control item)
        self._idle = threading.Condition()  # notified when an item finishes
        self._running = 0
        self.draining = threading.Event()
        self._threads = [threading.Thread(target=self._loop, name=f"engine-feeder-{i}", daemon=True)
                         for i in range(workers)]
        for thread in self._threads:
            thread.start()

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
            with self._taking:
                item = self._items.get()
                if item is None:
                    return
                fn, future, bounded = item
                if bounded:
                    with self._lock:
                        self._pending -= 1
                        self._on_depth(self._pending)
                else:  # a control item: alone, once what was taken before it has finished
                    with self._idle:
                        self._idle.wait_for(lambda: self._running == 0)
                    self._run(fn, future)
                    continue
                with self._idle:
                    self._running += 1
            start = time.perf_counter()
            try:
                self._run(fn, future)
            finally:
                with self._idle:
                    self._running -= 1
                    self._idle.notify_all()
            self._service_s += _EWMA * (time.perf_counter() - start - self._service_s)

    @staticmethod
    def _run(fn: Callable[[], T], future: Future) -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            result = fn()
        except BaseException as e:  # handed to whoever awaits the future
            future.set_exception(e)
        else:
            future.set_result(result)

    def stop(self, timeout: float | None = None) -> None:
        """Take no new work, finish what is queued (work can check `draining` to cut itself
        short) and stop the worker thread."""
        self.draining.set()
        for _ in self._threads:
            self._items.put(None)
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        if any(thread.is_alive() for thread in self._threads):
            logger.warning("the engine is still busy after %.0f s of draining; exiting anyway", timeout)
