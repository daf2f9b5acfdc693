"""The SQLite job store, without a server."""

from __future__ import annotations

from sglang_diffusion.server.jobs import COMPLETED, FAILED, IN_PROGRESS, INTERRUPTED, JobStore, VideoJob


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
    store.update(job(0).id, status=COMPLETED, progress=100)
    assert store.get(job(0).id).progress == 100
    store.delete(job(0).id)
    assert store.get(job(0).id) is None
