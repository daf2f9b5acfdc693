"""Expiry of finished outputs: after `output_ttl_s`, a finished video job becomes `expired` (still
listed, its file gone) and served image files are deleted. The record moves first, then the
file goes, so that no job ever says completed while its file is missing; a crash in between
leaves at most a stray file, which the next sweep removes.
"""

from __future__ import annotations

import logging
import threading
import time

from sglang_diffusion.config.server_args import ServerArgs
from sglang_diffusion.server.jobs import EXPIRED, JobStore
from sglang_diffusion.server.outputs import OutputStore

logger = logging.getLogger(__name__)

DEFAULT_LOCAL_TTL_S = 24 * 3600


def output_ttl_s(args: ServerArgs) -> int:
    """0 (keep forever) by default with cloud storage (the bucket's lifecycle rules decide), a day locally."""
    if args.output_ttl_s is not None:
        return args.output_ttl_s
    return 0 if args.cloud_storage_type == "s3" else DEFAULT_LOCAL_TTL_S


class Expiry:
    def __init__(self, jobs: JobStore, outputs: OutputStore, ttl_s: int):
        self.jobs, self.outputs, self.ttl_s = jobs, outputs, ttl_s
        self._stop = threading.Event()
        self._thread = None
        if ttl_s:
            self._thread = threading.Thread(target=self._loop, name="expiry", daemon=True)
            self._thread.start()

    def expires_at(self, completed_at: int | None) -> int | None:
        return completed_at + self.ttl_s if self.ttl_s and completed_at is not None else None

    def sweep(self) -> None:
        now = time.time()
        for job in self.jobs.expire(int(now - self.ttl_s)):
            if job.file_name:
                (self.outputs.videos / job.file_name).unlink(missing_ok=True)
            if job.s3_key:
                self.outputs.delete_object(job.s3_key)
            logger.info("video job %s expired", job.id)
        for path in self.outputs.videos.glob("video_*.mp4"):  # stray files of expired or deleted jobs
            job = self.jobs.get(path.stem)
            if job is None or job.status == EXPIRED:
                path.unlink(missing_ok=True)
        removed = self.outputs.expire_images(now - self.ttl_s)
        if removed:
            logger.info("%d served image file(s) expired", removed)

    def _loop(self) -> None:
        interval = min(60.0, max(1.0, self.ttl_s / 10))
        while not self._stop.wait(interval):
            try:
                self.sweep()
            except Exception:  # a failed sweep is retried at the next; it must not end the thread
                logger.exception("expiry sweep failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
