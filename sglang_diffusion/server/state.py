"""Everything a running server holds, built once before the port opens: the started Engine, the
queue in front of it, the job database, the output store and the metrics."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TypeVar

from sglang_diffusion.config.families import FAMILIES, Family
from sglang_diffusion.config.sampling_params import SamplingParams
from sglang_diffusion.config.server_args import ServerArgs
from sglang_diffusion.runtime.engine import Engine
from sglang_diffusion.runtime.result import GenerationResult
from sglang_diffusion.server.errors import APIError
from sglang_diffusion.server.jobs import JobStore
from sglang_diffusion.server.metrics import Metrics
from sglang_diffusion.server.outputs import OutputStore
from sglang_diffusion.server.params import ParamsBuilder
from sglang_diffusion.server.work_queue import Draining, QueueFull, WorkQueue
from sglang_diffusion.storage.s3 import S3Storage

logger = logging.getLogger(__name__)
T = TypeVar("T")

JOB_DB = "jobs.sqlite3"


@dataclass
class ServerState:
    args: ServerArgs
    engine: Engine
    queue: WorkQueue
    jobs: JobStore
    outputs: OutputStore
    metrics: Metrics
    params: ParamsBuilder
    family: Family | None
    started_at: int = field(default_factory=lambda: int(time.time()))
    # video jobs not finished yet: id -> (their queue Future, their cancel event)
    running: dict[str, tuple[Future, threading.Event]] = field(default_factory=dict)
    _image_cancels: set[threading.Event] = field(default_factory=set)  # image requests in flight

    @property
    def model_id(self) -> str:
        return self.params.model_id

    def submit(self, fn: Callable[[], T], *, bounded: bool = True) -> Future:
        """Queue work for the engine, or answer 429 (queue full) / 503 (shutting down)."""
        try:
            return self.queue.submit(fn, bounded=bounded)
        except QueueFull as e:
            raise APIError(429, f"the server is busy: {e}", type="rate_limit_error", code="queue_full",
                           headers={"Retry-After": str(e.retry_after_s)}) from None
        except Draining:
            raise APIError(503, "the server is shutting down", type="server_error", code="shutting_down") from None

    async def call(self, fn: Callable[[], T], *, bounded: bool = True) -> T:
        return await asyncio.wrap_future(self.submit(fn, bounded=bounded))

    async def generate(self, params: SamplingParams) -> GenerationResult:
        """One generation through the queue; if the client goes away, the work stops at its next step."""
        cancel = threading.Event()
        self._image_cancels.add(cancel)
        try:
            result = await self.call(lambda: self.engine.generate(params, cancel=cancel))
        except asyncio.CancelledError:
            cancel.set()
            raise
        except APIError:  # refused before it ran (queue full, shutting down)
            raise
        except Exception as e:
            self.metrics.observe_error(e)
            raise
        finally:
            self._image_cancels.discard(cancel)
        self.metrics.observe_result(result)
        return result

    def shutdown(self) -> None:
        """Drain: queued image requests still run, queued video jobs fail as interrupted, the running
        work finishes; then uploads complete, and the engine (its rank processes too) stops."""
        self.queue.stop()
        self.outputs.close()
        self.jobs.close()
        self.engine.shutdown()
        logger.info("server stopped")

    def cancel_running(self) -> None:
        """Second Ctrl-C: stop the work in flight at its next step instead of finishing it."""
        for cancel in [c for _, c in list(self.running.values())] + list(self._image_cancels):
            cancel.set()


def build_state(args: ServerArgs, defaults: SamplingParams, engine: Engine,
                s3: S3Storage | None) -> ServerState:
    """Everything around the engine, which the caller has started (the model is loaded by now)."""
    root = Path(defaults.output_path).expanduser()
    metrics = Metrics(args.max_queue_size)
    jobs = JobStore(root / JOB_DB)
    interrupted = jobs.fail_unfinished("the server stopped before this job finished; submit it again")
    if interrupted:
        logger.warning("%d video job(s) were cut off by the last shutdown and are marked failed", interrupted)
    family = FAMILIES.get(engine.info.get("family"))
    return ServerState(
        args=args, engine=engine, queue=WorkQueue(args.max_queue_size, metrics.queue_depth.set), jobs=jobs,
        outputs=OutputStore(root, s3, metrics.observe_upload), metrics=metrics,
        params=ParamsBuilder(args, defaults, family, args.model_path), family=family)
