"""Video jobs, kept in SQLite (`jobs.sqlite3` under the output path) so that they outlive the
server: after a restart finished jobs are still listed and downloadable, and jobs the restart
cut off are marked failed with the reason.

A job is a state machine: its status only moves along TRANSITIONS, each move one conditional
UPDATE, so that two writers (a DELETE and the job's own thread) can never both win: the loser
learns it and acts on it. One server owns the store (`OwnerLock` on the output path).
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import socket
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from sglang_diffusion.errors import ConfigError

QUEUED, IN_PROGRESS, COMPLETED, FAILED, EXPIRED = "queued", "in_progress", "completed", "failed", "expired"
FINISHED = (COMPLETED, FAILED, EXPIRED)
TRANSITIONS = {QUEUED: (IN_PROGRESS, FAILED), IN_PROGRESS: (COMPLETED, FAILED), COMPLETED: (EXPIRED,),
               FAILED: (EXPIRED,), EXPIRED: ()}
INTERRUPTED = "interrupted"
CANCELLED = "cancelled"
LOCK_FILE = "server.lock"


class OwnerLock:
    """An exclusive lock on an output path for the life of a server (flock: the kernel drops it when
    the process dies, so a crashed server never blocks the next). A second server refuses to start."""

    def __init__(self, root: Path):
        root.mkdir(parents=True, exist_ok=True)
        self.path = root / LOCK_FILE
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            owner = os.pread(self._fd, 256, 0).decode(errors="replace").strip() or "another process"
            os.close(self._fd)
            raise ConfigError(f"output_path {root} is in use by another server ({owner}): its jobs and files are "
                              "that server's; give this one its own --output-path") from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"pid {os.getpid()} on {socket.gethostname()}, since {time.ctime()}\n".encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the lock
            self._fd = None


@dataclass
class VideoJob:
    id: str
    model: str
    prompt: str | None
    size: str  # "WxH"
    seconds: str
    params: dict = field(default_factory=dict)  # the generation parameters, for the record
    status: str = QUEUED
    progress: int = 0  # percent of denoising steps done
    created_at: int = field(default_factory=lambda: int(time.time()))
    completed_at: int | None = None
    file_name: str | None = None  # the MP4 under the output path's videos/, while kept locally
    s3_key: str | None = None  # the object, once uploaded
    error_code: str | None = None
    error_message: str | None = None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


_COLUMNS = [f.name for f in dataclasses.fields(VideoJob)]


class JobStore:
    """Thread-safe: the event loop, the engine feeder and upload threads all write here."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS videos (id TEXT PRIMARY KEY, model TEXT, prompt TEXT, size TEXT, "
                "seconds TEXT, params TEXT, status TEXT, progress INTEGER, created_at INTEGER, "
                "completed_at INTEGER, file_name TEXT, s3_key TEXT, error_code TEXT, error_message TEXT)")

    def fail_unfinished(self, message: str) -> int:
        """Mark every job that was queued or running as failed (after a restart); how many. Only
        the store's owner may: the jobs of a live server are not unfinished."""
        with self._lock:
            cur = self._db.execute(
                "UPDATE videos SET status=?, error_code=?, error_message=?, completed_at=? WHERE status IN (?, ?)",
                (FAILED, INTERRUPTED, message, int(time.time()), QUEUED, IN_PROGRESS))
            return cur.rowcount

    def transition(self, job_id: str, status: str, **values) -> bool:
        """Move a job to `status` (with `values`) if its current status may lead there; whether it did."""
        assert status in TRANSITIONS and set(values) <= set(_COLUMNS) - {"status", "id"}, (status, values)
        sources = [s for s, targets in TRANSITIONS.items() if status in targets]
        with self._lock:
            cur = self._db.execute(
                f"UPDATE videos SET {', '.join(f'{k}=?' for k in ('status', *values))} "
                f"WHERE id=? AND status IN ({', '.join('?' * len(sources))})",
                [status, *values.values(), job_id, *sources])
            return cur.rowcount == 1

    def expire(self, finished_before: int) -> list[VideoJob]:
        """Jobs finished before the time, moved to expired (their file fields cleared); the jobs as
        they were, so that the caller deletes their files after the record no longer points at them."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM videos WHERE status IN (?, ?) AND completed_at < ?",
                (COMPLETED, FAILED, finished_before)).fetchall()
        jobs = [_job(r) for r in rows]
        return [j for j in jobs if self.transition(j.id, EXPIRED, file_name=None, s3_key=None)]

    def add(self, job: VideoJob) -> None:
        row = {**dataclasses.asdict(job), "params": json.dumps(job.params)}
        with self._lock:
            self._db.execute(f"INSERT INTO videos ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})",
                             [row[c] for c in _COLUMNS])

    def update(self, job_id: str, **values) -> None:
        """Fields other than the status (progress, the file's name); the status moves by `transition`."""
        assert values and set(values) <= set(_COLUMNS) - {"status", "id"}, values
        with self._lock:
            self._db.execute(f"UPDATE videos SET {', '.join(f'{k}=?' for k in values)} WHERE id=?",
                             [*values.values(), job_id])

    def get(self, job_id: str) -> VideoJob | None:
        with self._lock:
            row = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM videos WHERE id=?", (job_id,)).fetchone()
        return _job(row) if row else None

    def list(self, limit: int, order: str, after: str | None = None) -> list[VideoJob]:
        """Jobs by creation time ("asc" or "desc"), `limit` of them, starting after the job `after`."""
        direction = "ASC" if order == "asc" else "DESC"
        query, args = f"SELECT {', '.join(_COLUMNS)} FROM videos", []
        if after is not None:
            cmp = ">" if order == "asc" else "<"
            query += f" WHERE (created_at, rowid) {cmp} (SELECT created_at, rowid FROM videos WHERE id=?)"
            args.append(after)
        query += f" ORDER BY created_at {direction}, rowid {direction} LIMIT ?"
        with self._lock:
            rows = self._db.execute(query, [*args, limit]).fetchall()
        return [_job(r) for r in rows]

    def delete(self, job_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM videos WHERE id=?", (job_id,))

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _job(row) -> VideoJob:
    values = dict(zip(_COLUMNS, row))
    values["params"] = json.loads(values["params"] or "{}")
    return VideoJob(**values)
