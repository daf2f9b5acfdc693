"""Everything a running server holds, built once before the port opens: the started Engine, the
queue in front of it, the job database, the output store and the metrics."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import Future
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, TypeVar

from starlette.requests import Request

from sglang_diffusion.config.families import FAMILIES, Family
from sglang_diffusion.config.sampling_params import SamplingParams
from sglang_diffusion.config.server_args import ServerArgs
from sglang_diffusion.errors import ConfigError
from sglang_diffusion.loader.resolve import resolve_model_path
from sglang_diffusion.runtime.engine import Engine
from sglang_diffusion.runtime.result import GenerationResult
from sglang_diffusion.server.errors import APIError
from sglang_diffusion.server.expiry import Expiry, output_ttl_s
from sglang_diffusion.server.jobs import JobStore, OwnerLock
from sglang_diffusion.server.metrics import Metrics
from sglang_diffusion.server.outputs import OutputStore
from sglang_diffusion.server.params import ParamsBuilder, token_counter
from sglang_diffusion.server.image_progress import ProgressBoard
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
    lock: OwnerLock
    expiry: Expiry
    api_key: str | None = None
    started_at: int = field(default_factory=lambda: int(time.time()))
    # video jobs not finished yet: id -> (their queue Future, their cancel event)
    running: dict[str, tuple[Future, threading.Event]] = field(default_factory=dict)
    progress: ProgressBoard = field(default_factory=ProgressBoard)  # image requests that asked for it
    _image_cancels: set[threading.Event] = field(default_factory=set)  # image requests in flight
    _answering: int = 0  # answers in flight that a drain waits for (see `answering`)

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

    async def generate(self, params: SamplingParams, request: Request | None = None,
                       progress_id: str | None = None) -> GenerationResult:
        """One generation through the queue. If `request`'s client goes away first, the work is
        dropped (still queued) or stopped at its next denoising step (running), and counted.
        With `progress_id`, its progress is on the progress board while it is in flight."""
        cancel = threading.Event()
        entry = self.progress.start(progress_id) if progress_id is not None else None

        def work() -> GenerationResult:
            if entry is None:
                return self.engine.generate(params, cancel=cancel)
            self.progress.update(entry)  # taken by the engine
            return self.engine.generate(params, on_progress=partial(self.progress.update, entry), cancel=cancel)

        try:
            future = self.submit(work)
        except APIError:
            self.progress.finish(progress_id)
            raise
        waiting = asyncio.wrap_future(future)
        gone = asyncio.ensure_future(_client_gone(request.receive)) if request is not None else None
        self._image_cancels.add(cancel)
        try:
            if gone is not None:
                await asyncio.wait((waiting, gone), return_when=asyncio.FIRST_COMPLETED)
                if not waiting.done():
                    stage = "queued" if future.cancel() else "running"
                    cancel.set()
                    waiting.cancel()
                    self.metrics.abandoned.labels(stage).inc()
                    logger.info("the client went away; its %s image request is %s", stage,
                                "dropped" if stage == "queued" else "stopped at its next denoising step")
                    if stage == "running":
                        future.add_done_callback(_log_abandoned)
                    raise APIError(499, "the client closed the request", code="client_closed_request")
            result = await waiting
        except asyncio.CancelledError:
            cancel.set()
            raise
        except APIError:
            raise
        except Exception as e:
            self.metrics.observe_error(e)
            raise
        finally:
            self._image_cancels.discard(cancel)
            self.progress.finish(progress_id)
            if gone is not None:
                gone.cancel()
        self.metrics.observe_result(result)
        return result

    @asynccontextmanager
    async def answering(self):
        """Around an answer that uses the engine or the storage: a drain waits for it to be sent."""
        self._answering += 1
        try:
            yield
        finally:
            self._answering -= 1

    def drain(self) -> None:
        """Take no new work and finish what was taken: queued image requests still run, queued video
        jobs fail as interrupted, the running work finishes, the answers are sent, uploads complete.
        Blocking (a thread of its own); while it lasts the server still answers (503 to new work)."""
        self.queue.stop()
        while self._answering:
            time.sleep(0.05)
        self.outputs.close()

    def shutdown(self) -> None:
        """Drain, then stop the engine (its rank processes too) and give up the output path."""
        self.drain()
        self.expiry.stop()
        self.jobs.close()
        self.engine.shutdown()
        self.lock.release()
        logger.info("server stopped")

    def cancel_running(self) -> None:
        """Second Ctrl-C: stop the work in flight at its next step instead of finishing it."""
        for cancel in [c for _, c in list(self.running.values())] + list(self._image_cancels):
            cancel.set()

    def takes_image(self) -> bool | None:
        """Whether the model takes an input image, when that is known before it runs."""
        if "image_input" in self.engine.info:
            return self.engine.info["image_input"]
        if self.family is not None and self.family.is_video:
            return self.family.task in ("i2v", "ti2v")
        return None


def _log_abandoned(future: Future) -> None:
    error = future.exception()
    logger.info("abandoned image request: %s", error if error is not None else "finished before it could stop")


async def _client_gone(receive) -> None:
    """Returns once the client has disconnected (the body has been read by then)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def resolve_api_key(args: ServerArgs) -> str | None:
    """--api-key (or SGLANG_API_KEY), else the first line of --api-key-file."""
    if args.api_key_file is None:
        return args.api_key or None
    try:
        key = Path(args.api_key_file).expanduser().read_text().strip().splitlines()[:1]
    except OSError as e:
        raise ConfigError(f"api_key_file {args.api_key_file!r}: cannot read it ({e.strerror})") from None
    if not key or not key[0].strip():
        raise ConfigError(f"api_key_file {args.api_key_file!r} is empty")
    return key[0].strip()


def build_state(args: ServerArgs, defaults: SamplingParams, engine: Engine, s3: S3Storage | None,
                lock: OwnerLock) -> ServerState:
    """Everything around the engine, which the caller has started (the model is loaded by now),
    on the output path the caller has locked."""
    root = Path(defaults.output_path).expanduser()
    metrics = Metrics(args.max_queue_size)
    jobs = JobStore(root / JOB_DB)
    interrupted = jobs.fail_unfinished("the server stopped before this job finished; submit it again")
    if interrupted:
        logger.warning("%d video job(s) were cut off by the last shutdown and are marked failed", interrupted)
    family = FAMILIES.get(engine.info.get("family"))
    outputs = OutputStore(root, s3, metrics.observe_upload)
    count_tokens = token_counter(resolve_model_path(args.model_path, args.revision))
    if count_tokens is None:
        logger.warning("no tokenizer found for the prompt token bound; prompts are bounded by characters only")
    if args.lora_dirs:
        logger.info("LoRA adapters may come from Hugging Face ids and from %s", ", ".join(map(str, args.lora_dirs)))
    else:
        logger.info("LoRA adapters may come from Hugging Face ids only (--lora-dirs allows local folders)")
    return ServerState(
        args=args, engine=engine, jobs=jobs,
        queue=WorkQueue(args.max_queue_size, metrics.queue_depth.set, workers=engine.max_batch_size),
        outputs=outputs, metrics=metrics, lock=lock, api_key=resolve_api_key(args),
        expiry=Expiry(jobs, outputs, output_ttl_s(args)),
        params=ParamsBuilder(args, defaults, family, args.model_path, count_tokens), family=family)
