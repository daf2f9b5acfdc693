"""The bounded queue in front of the engine, without a model."""

from __future__ import annotations

import threading

import pytest

from sglang_diffusion.server.work_queue import Draining, QueueFull, WorkQueue


def test_work_runs_in_order_and_past_the_bound_is_refused_with_a_retry_estimate():
    gate, order, depths = threading.Event(), [], []
    queue = WorkQueue(max_pending=2, on_depth=depths.append)
    first = queue.submit(gate.wait)
    while queue.depth:  # the worker has taken the first item and blocks on the gate
        pass
    waiting = [queue.submit(lambda i=i: order.append(i)) for i in range(2)]
    with pytest.raises(QueueFull) as refused:
        queue.submit(lambda: None)
    assert refused.value.retry_after_s >= 1
    control = queue.submit(lambda: order.append("control"), bounded=False)  # not counted against the bound
    gate.set()
    for future in (first, *waiting, control):
        future.result(timeout=10)
    assert order == [0, 1, "control"] and depths[-1] == 0
    queue.stop()


def test_cancelled_pending_work_never_runs_and_errors_reach_the_caller():
    gate, ran = threading.Event(), []
    queue = WorkQueue(max_pending=4)
    queue.submit(gate.wait)
    pending = queue.submit(lambda: ran.append("x"))
    assert pending.cancel()
    failing = queue.submit(lambda: 1 / 0)
    gate.set()
    with pytest.raises(ZeroDivisionError):
        failing.result(timeout=10)
    assert ran == []
    queue.stop()


def test_stop_finishes_queued_work_and_then_takes_no_more():
    queue = WorkQueue(max_pending=4)
    futures = [queue.submit(lambda i=i: i) for i in range(3)]
    queue.stop(timeout=10)
    assert [f.result(timeout=1) for f in futures] == [0, 1, 2]
    with pytest.raises(Draining):
        queue.submit(lambda: None)
