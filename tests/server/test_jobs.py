"""The SQLite job store, without a server."""

from __future__ import annotations

import os

import pytest

from sglang_diffusion.errors import ConfigError
from sglang_diffusion.server.jobs import (COMPLETED, EXPIRED, FAILED, IN_PROGRESS, INTERRUPTED, QUEUED, JobStore,
                                          OwnerLock, VideoJob)


def job(i: int, **kw) -> VideoJob:
    return VideoJob(id=f"video_{i:032x}", model="m", prompt=f"p{i}", size="32x32", seconds="1",
                    params={"seed": i}, created_at=1000 + i, **kw)


def test_jobs_persist_and_unfinished_ones_are_failed_after_a_restart(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite3")
    store.add(job(1, status=COMPLETED, file_name="a.mp4"))
    store.add(job(2, status=IN_PROGRESS, progress=40))
    store.add(job(3))
    store.close()
    store = JobStore(tmp_path / "jobs.sqlite3")
    assert store.fail_unfinished("restarted") == 2
    assert store.get(job(1).id) == job(1, status=COMPLETED, file_name="a.mp4")
    cut = store.get(job(2).id)
    assert (cut.status, cut.error_code, cut.error_message, cut.progress) == (FAILED, INTERRUPTED, "restarted", 40)
    assert store.get("video_missing") is None


def test_list_orders_by_creation_and_pages_after_an_id(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite3")
    for i in range(5):
        store.add(job(i))
    assert [j.prompt for j in store.list(3, "desc")] == ["p4", "p3", "p2"]
    assert [j.prompt for j in store.list(3, "desc", after=job(2).id)] == ["p1", "p0"]
    assert [j.prompt for j in store.list(2, "asc", after=job(2).id)] == ["p3", "p4"]
    store.update(job(0).id, progress=100)
    assert store.get(job(0).id).progress == 100
    store.delete(job(0).id)
    assert store.get(job(0).id) is None


def test_status_moves_only_along_the_state_machine(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite3")
    store.add(job(1))
    assert not store.transition(job(1).id, COMPLETED)  # queued -> completed skips running
    assert store.transition(job(1).id, IN_PROGRESS)
    assert store.transition(job(1).id, FAILED, error_code="cancelled")
    # the loser of a race (the upload finishing after a DELETE failed the job) learns it lost
    assert not store.transition(job(1).id, COMPLETED, progress=100)
    assert not store.transition(job(1).id, IN_PROGRESS)
    assert (store.get(job(1).id).status, store.get(job(1).id).progress) == (FAILED, 0)
    store.add(job(2, status=COMPLETED, completed_at=1500, file_name="b.mp4"))
    store.add(job(3, status=QUEUED))
    (expired,) = [j for j in store.expire(finished_before=2000) if j.id == job(2).id]
    assert expired.file_name == "b.mp4"  # as it was: the caller deletes that file next
    assert store.get(job(2).id).status == EXPIRED and store.get(job(2).id).file_name is None
    assert store.get(job(3).id).status == QUEUED and not store.transition(job(2).id, COMPLETED)


def test_a_second_owner_of_an_output_path_is_refused_until_the_first_lets_go(tmp_path):
    first = OwnerLock(tmp_path)
    with pytest.raises(ConfigError, match=f"in use by another server \\(pid {os.getpid()}"):
        OwnerLock(tmp_path)
    first.release()
    OwnerLock(tmp_path).release()
