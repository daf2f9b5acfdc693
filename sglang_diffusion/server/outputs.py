"""Where served files live: under the output path (images/, videos/, uploads/ and the job
database), and, with cloud storage on, in an S3 bucket.

The cloud flow: the output is written to a local file, uploaded in a background thread, and
the local file is deleted only once the upload succeeded; the answer is the object's URL. A
failed upload keeps the file, logs why, and the answer is the local URL: no output is lost. An
answer waits for its upload at most the storage's bounded time (`wait_s`); past it, the answer
is the local URL and the file stays, even if the upload ends later.

File names are always made here, from fresh ids; nothing a client sends becomes a path.
"""

from __future__ import annotations

import logging
import re
import threading
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from sglang_diffusion.storage.s3 import S3Storage

logger = logging.getLogger(__name__)

IMAGE_FORMATS = {"png": "png", "jpeg": "jpg", "webp": "webp"}  # output_format -> file extension
_ID = re.compile(r"^(img|video)_[0-9a-f]{32}$")


def new_id(kind: str) -> str:
    return f"{kind}_{uuid.uuid4().hex}"


def valid_id(value: str, kind: str) -> bool:
    return bool(_ID.match(value)) and value.startswith(kind + "_")


class OutputStore:
    def __init__(self, root: Path, s3: S3Storage | None, on_upload: Callable[[bool], None] | None = None):
        self.root, self.s3 = root, s3
        self.images, self.videos, self.uploads = root / "images", root / "videos", root / "uploads"
        for folder in (self.images, self.videos, self.uploads):
            folder.mkdir(parents=True, exist_ok=True)
        self._on_upload = on_upload or (lambda ok: None)
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="upload") if s3 else None

    def image_file(self, image_id: str) -> Path | None:
        """The stored file of an image id, if there is one."""
        if not valid_id(image_id, "img"):
            return None
        return next((p for ext in IMAGE_FORMATS.values() if (p := self.images / f"{image_id}.{ext}").is_file()), None)

    def recent_images(self, limit: int) -> list[tuple[str, float]]:
        """The newest `limit` image files kept here, as (image id, modification time), newest first."""
        stamped = []
        for path in self.images.iterdir():
            try:
                if valid_id(path.stem, "img") and path.suffix[1:] in IMAGE_FORMATS.values():
                    stamped.append((path.stat().st_mtime, path))
            except FileNotFoundError:  # expired meanwhile
                pass
        return [(path.stem, mtime) for mtime, path in sorted(stamped, reverse=True)[:limit]]

    def upload_path(self, suffix: str = ".png") -> Path:
        return self.uploads / f"{uuid.uuid4().hex}{suffix}"

    @property
    def wait_s(self) -> float:
        """The longest an answer waits for its upload."""
        return self.s3.max_wait_s if self.s3 else 0.0

    def publish(self, path: Path, key: str) -> "Publication":
        """Start storing `path` as object `key`; `Publication.future` gives the key once uploaded,
        or None when the file stays local (no cloud storage, or the upload failed)."""
        publication = Publication(path, key)
        if self._pool is None:
            publication.settle(None)
        else:
            self._pool.submit(self._upload, publication)
        return publication

    def _upload(self, publication: "Publication") -> None:
        path, key = publication.path, publication.key
        try:
            self.s3.upload(path, key)
        except Exception as e:  # any failure (network, credentials, bucket): keep the file, serve it locally
            logger.warning("upload of %s to s3://%s/%s failed (%s: %s); the file is kept and served locally",
                           path, self.s3.bucket, key, type(e).__name__, e)
            self._on_upload(False)
            publication.settle(None)
            return
        self._on_upload(True)
        if publication.settle(key):
            path.unlink(missing_ok=True)

    def expire_images(self, older_than: float) -> int:
        """Delete the served image files last written before the time; how many."""
        removed = 0
        for path in self.images.iterdir():
            try:
                if path.stat().st_mtime < older_than:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:  # gone meanwhile
                pass
        return removed

    def object_url(self, key: str) -> str:
        return self.s3.url(key)

    def delete_object(self, key: str) -> None:
        try:
            self.s3.delete(key)
        except Exception as e:  # the record goes anyway; a stray object is only storage
            logger.warning("could not delete s3://%s/%s (%s: %s)", self.s3.bucket, key, type(e).__name__, e)

    def close(self) -> None:
        """Wait for the uploads in flight."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)


class Publication:
    """One file on its way to the bucket. Whoever settles it first decides where it lives: the
    upload (the object; the local file goes) or an answer that stopped waiting (the local file
    stays, and the answer gives its URL)."""

    def __init__(self, path: Path, key: str):
        self.path, self.key, self.future = path, key, Future()
        self._lock = threading.Lock()

    def settle(self, key: str | None) -> bool:
        """Settle with `key` (None: local); whether this call settled it."""
        with self._lock:
            if self.future.done():
                return False
            self.future.set_result(key)
            return True

    def keep_local(self, reason: str) -> None:
        """The answer stops waiting: the file stays local, unless the upload settled it first."""
        if self.settle(None):
            logger.warning("%s: answering the local URL of %s; the file is kept", reason, self.path.name)
