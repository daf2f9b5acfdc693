"""The Engine: one construction path for the CLI, the server and the Python API.

With one rank the pipeline lives in this process. With several, one process per rank is
spawned; rank 0 takes each request from the engine and broadcasts it, and every rank
builds the same pipeline. A rank that dies or fails surfaces as an error here, never a
hang: while waiting, the engine watches its rank processes.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import queue
import threading
import time
import uuid
from typing import Callable, TypeVar

import torch

from sglang_diffusion import errors
from sglang_diffusion.config.sampling_params import SamplingParams
from sglang_diffusion.config.server_args import ServerArgs
from sglang_diffusion.config.support import check_supported
from sglang_diffusion.distributed.launch import free_port, spawn_ranks
from sglang_diffusion.errors import ConfigError, RankFailedError
from sglang_diffusion.pipelines.hooks import StepHooks
from sglang_diffusion.runtime.result import GenerationResult
from sglang_diffusion.runtime.worker import RankCall, RankWorker, rank_main

logger = logging.getLogger(__name__)
T = TypeVar("T")

_POLL_S = 0.5


def _rebuild_error(rank: int, name: str, message: str, is_user_error: bool, tb: str) -> Exception:
    cls = getattr(errors, name, None)
    if is_user_error and isinstance(cls, type) and issubclass(cls, errors.SGLangDiffusionError):
        return cls(message)
    return RankFailedError(f"rank {rank} failed: {name}: {message}\n{tb}")


class Engine:
    def __init__(self, args: ServerArgs):
        self.args = args
        self._local: RankWorker | None = None
        self._procs: list[mp.Process] = []
        self._requests = self._responses = self._cancel = None
        self._lock = threading.Lock()  # one request at a time through the ranks
        self.info: dict = {}

    # -- life cycle ------------------------------------------------------------------------
    def start(self) -> "Engine":
        check_supported(self.args)
        n = self.args.num_gpus
        if torch.cuda.is_available() and n > torch.cuda.device_count():
            raise ConfigError(f"num_gpus={n} but only {torch.cuda.device_count()} CUDA device(s) are visible")
        if n > 1:  # the pipeline resolves the layout (defaults, what its backend can split) and logs it
            logger.info("starting %d rank processes", n)
        if n == 1:
            self._local = RankWorker(self.args)
            self.info = self._local.describe()
            return self
        ctx = mp.get_context("spawn")
        self._requests, self._responses, self._cancel = ctx.Queue(), ctx.Queue(), ctx.Event()
        init_addr = self.args.dist_init_addr or f"127.0.0.1:{free_port()}"
        self._procs = spawn_ranks(
            rank_main, n,
            lambda r: (r, n, self.args, init_addr, self._requests, self._responses, self._cancel), ctx)
        ready = 0
        try:
            while ready < n:
                kind, rank, *payload = self._wait()
                if kind == "ready":
                    ready += 1
                    if rank == 0:
                        self.info = payload[0]
        except BaseException:
            self.shutdown()
            raise
        return self

    def _wait(self, cancel: threading.Event | None = None):
        """The next message from the ranks, watching that every rank process is still alive
        (and passing a caller's cancellation on to the ranks)."""
        while True:
            if cancel is not None and cancel.is_set():
                self._cancel.set()
            try:
                msg = self._responses.get(timeout=_POLL_S)
            except queue.Empty:
                dead = self._dead_ranks()
                if dead:
                    self.shutdown(kill=True)  # the others may be waiting in a collective for the dead one
                    raise self._died(dead)
                continue
            if msg[0] == "fatal":
                _, rank, name, message, is_user_error, tb = msg
                # A rank that loses a peer mid-collective fails too: name the rank that died first.
                dead = self._dead_ranks(grace_s=2.0) if not is_user_error else []
                self.shutdown(kill=True)
                if dead:
                    raise self._died(dead, also=f"rank {rank} then failed: {name}: {message.splitlines()[0]}")
                raise _rebuild_error(rank, name, message, is_user_error, tb)
            return msg

    def _dead_ranks(self, grace_s: float = 0.0) -> list[tuple[int, int | None]]:
        """(rank, exit code) of the rank processes that have exited, waiting up to grace_s for one."""
        deadline = time.monotonic() + grace_s
        while True:
            dead = [(r, p.exitcode) for r, p in enumerate(self._procs) if not p.is_alive()]
            if dead or time.monotonic() >= deadline:
                return dead
            time.sleep(0.05)

    @staticmethod
    def _died(dead: list[tuple[int, int | None]], also: str = "") -> RankFailedError:
        rank, code = dead[0]
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        return RankFailedError(f"rank {rank} exited unexpectedly ({how}); the request was abandoned and all ranks "
                               f"have been stopped" + (f" ({also})" if also else ""))

    def shutdown(self, kill: bool = False) -> None:
        """Stop the ranks: asked to finish (up to 10 s in all), or killed at once (`kill`: after a
        failure, when survivors may be blocked in a collective with a dead rank)."""
        self._local = None
        if not self._procs:
            return
        if not kill and any(p.is_alive() for p in self._procs):
            try:
                self._requests.put(None)
            except (OSError, ValueError):
                pass
            deadline = time.monotonic() + 10
            for p in self._procs:
                p.join(timeout=max(0.0, deadline - time.monotonic()))
        for p in self._procs:
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
        self._procs = []

    def __enter__(self) -> "Engine":
        return self.start() if self._local is None and not self._procs else self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    # -- requests --------------------------------------------------------------------------
    def generate(self, params: SamplingParams, on_progress: Callable[[int, int], None] | None = None,
                 cancel: threading.Event | None = None) -> GenerationResult:
        """Run one request. `on_progress(done, total)` is called after each denoising step;
        setting `cancel` stops the request at the next step with `RequestCancelled`."""
        with self._lock:
            if self._local is not None:
                hooks = StepHooks(on_progress, cancel.is_set if cancel is not None else None)
                return self._local.run(params, hooks)
            return self._on_ranks(params, on_progress, cancel)

    def call(self, fn: Callable[..., T], *args) -> T:
        """Run `fn(pipeline, *args)` on every rank, between two requests, and return rank 0's
        result: for control operations (loading a LoRA, ...) that every rank must apply alike.
        `fn` must be a module-level function, since it is pickled by name for rank processes."""
        with self._lock:
            if self._local is not None:
                return fn(self._local.pipeline, *args)
            return self._on_ranks(RankCall(fn, args))

    def _on_ranks(self, work: SamplingParams | RankCall, on_progress=None, cancel=None):
        """Broadcast one piece of work to the rank processes and wait for rank 0's answer."""
        if not self._procs:
            raise RuntimeError("Engine used before start() or after shutdown()")
        request_id = uuid.uuid4().hex
        self._cancel.clear()
        self._requests.put((request_id, work))
        while True:
            kind, rid, *payload = self._wait(cancel)
            if rid != request_id:
                continue
            if kind == "progress":
                if on_progress is not None:
                    on_progress(*payload)
                continue
            if kind == "result":
                return payload[0]
            rank, (name, message, is_user_error, tb) = payload
            raise _rebuild_error(rank, name, message, is_user_error, tb)
