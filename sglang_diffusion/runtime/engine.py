"""The Engine: one construction path for the CLI, the server and the Python API.

With one rank the pipeline lives in this process. With several, one process per rank is
spawned; rank 0 takes each request from the engine and broadcasts it, and every rank
builds the same pipeline. A rank that dies or fails surfaces as an error here, never a
hang: while waiting, the engine watches its rank processes.

Several machines: either the same command on each (`--nnodes N --node-rank i
--dist-init-addr host:port`; each spawns its num_gpus / N ranks; node 0 takes the requests and
the others' engines follow, `start()` returning when node 0 stops), or torchrun, which starts
every rank itself: this process is then one rank (rank 0 in-process takes the requests; `start()`
of any other rank serves rank 0 until it stops). `follower` says that this engine takes none.

Batching (`max_batch_size` over 1): requests that can share a forward run as one batch
(`runtime.batching`): `generate` calls from several threads (the server's) meet in the
`Batcher`, which waits up to `batching_delay_ms` for compatible company; `generate_all` (several
prompts and seeds) plans its batches at once. Each request keeps its own prompt, seed and noise.
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
from sglang_diffusion.errors import ConfigError, InvalidRequestError, RankFailedError
from sglang_diffusion.pipelines.hooks import StepHooks
from sglang_diffusion.platform import Platform
from sglang_diffusion.runtime.batching import Batcher, Pending, expand_requests, plan_batches
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


class AllCancelled:
    """The cancel flag of a batch: set once every request in it is cancelled (a request that is
    not cancellable, None, keeps the batch running)."""

    def __init__(self, events: list[threading.Event | None]):
        self.events = events

    def is_set(self) -> bool:
        return all(e is not None and e.is_set() for e in self.events)


class Engine:
    def __init__(self, args: ServerArgs):
        self.args = args
        self._local: RankWorker | None = None
        self._procs: list[mp.Process] = []
        self._requests = self._responses = self._cancel = None
        self._lock = threading.Lock()  # one request at a time through the ranks
        self._torchrun = False  # this process is rank 0 of a torchrun launch
        self.follower = False  # this engine served another node's rank 0 and takes no requests
        self.info: dict = {}
        self.max_batch_size = 1  # outputs per forward, once started (1 where the pipeline cannot batch)
        self._batcher: Batcher | None = None

    # -- life cycle ------------------------------------------------------------------------
    def start(self) -> "Engine":
        self._launch()
        if not self.follower:
            self._start_batching()
        return self

    def _start_batching(self) -> None:
        size, refusal = self.args.max_batch_size, self.info.get("batch_refusal")
        if size > 1 and refusal:
            logger.warning("max_batch_size %d: requests run one at a time on this pipeline (%s)", size, refusal)
            size = 1
        self.max_batch_size = size
        if size > 1:
            self._batcher = Batcher(self._run_pending, size, self.args.batching_delay_ms / 1000)
            logger.info("batching compatible requests: up to %d outputs per forward, waiting at most %g ms for "
                        "company", size, self.args.batching_delay_ms)

    def _launch(self) -> "Engine":
        check_supported(self.args)
        if self.args.under_torchrun:
            return self._start_torchrun()
        n, nodes, node = self.args.num_gpus, self.args.nnodes, self.args.node_rank
        local = n // nodes
        if torch.cuda.is_available() and local > torch.cuda.device_count():
            raise ConfigError(f"num_gpus={n} over {nodes} machine(s) needs {local} CUDA devices here, but only "
                              f"{torch.cuda.device_count()} are visible")
        if n > 1:  # the pipeline resolves the layout (defaults, what its backend can split) and logs it
            logger.info("starting %d rank processes%s", local,
                        f" (ranks {node * local}-{node * local + local - 1} of {n}, node {node} of {nodes})"
                        if nodes > 1 else "")
        if n == 1:
            self._local = RankWorker(self.args)
            self.info = self._local.describe()
            return self
        ctx = mp.get_context("spawn")
        self._requests, self._responses, self._cancel = ctx.Queue(), ctx.Queue(), ctx.Event()
        init_addr = self.args.dist_init_addr or f"127.0.0.1:{free_port()}"
        first = node * local
        self._procs = spawn_ranks(
            rank_main, local,
            lambda i: (first + i, n, self.args, init_addr, self._requests, self._responses, self._cancel), ctx)
        ready = 0
        try:
            while ready < local:
                kind, rank, *payload = self._wait()
                if kind == "ready":
                    ready += 1
                    if rank == first:
                        self.info = payload[0]
            if node > 0:
                self._follow_node()
        except BaseException:
            self.shutdown()
            raise
        return self

    def _follow_node(self) -> None:
        """A node other than 0: its ranks serve node 0's rank 0; return when they have all ended."""
        logger.info("node %d: ranks ready; serving node 0 until it stops", self.args.node_rank)
        self.follower = True
        while any(p.is_alive() for p in self._procs):
            try:
                msg = self._responses.get(timeout=_POLL_S)
            except queue.Empty:
                failed = [(r, p.exitcode) for r, p in enumerate(self._procs) if p.exitcode not in (None, 0)]
                if failed:
                    self.shutdown(kill=True)
                    raise self._died(failed)
                continue
            if msg[0] == "fatal":
                _, rank, name, message, is_user_error, tb = msg
                self.shutdown(kill=True)
                raise _rebuild_error(rank, name, message, is_user_error, tb)
        self._procs = []

    def _start_torchrun(self) -> "Engine":
        """This process is one rank of a torchrun launch; rank 0 keeps the pipeline in-process."""
        import torch.distributed as dist

        from sglang_diffusion.distributed.parallel_state import destroy_world, init_world
        from sglang_diffusion.runtime.worker import follow

        init_world(0, 0, None, "nccl" if torch.cuda.is_available() else "gloo")  # torchrun's environment
        rank, world = dist.get_rank(), dist.get_world_size()
        if rank != 0:
            from sglang_diffusion.log import configure_logging

            configure_logging("warning", prefix=f"[rank {rank}] ")
        if self.args.num_gpus != world:
            destroy_world()
            raise ConfigError(f"num_gpus={self.args.num_gpus}, but torchrun started {world} ranks (WORLD_SIZE); "
                              "leave num_gpus out under torchrun")
        platform = Platform.current(rank)  # rank % devices: the local rank when every machine has as many
        if platform.device.type == "cuda":
            torch.cuda.set_device(platform.device)
        worker = RankWorker(self.args, rank, world)
        dist.barrier()
        self.info = worker.describe()
        if rank == 0:
            self._local, self._torchrun = worker, True
            return self
        self.follower = True
        try:
            follow(worker)
        finally:
            destroy_world()
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
        if self._batcher is not None:
            batcher, self._batcher = self._batcher, None
            batcher.stop()  # what waits for company runs first
        if self._torchrun:
            from sglang_diffusion.distributed.parallel_state import destroy_world
            from sglang_diffusion.runtime.worker import next_work

            self._torchrun = False
            try:
                next_work(0, lambda: None)  # the other ranks' follow() returns
            finally:
                destroy_world()
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
        """Run one request (one prompt and seed; see `generate_all` for several), batched with
        concurrent compatible ones when batching is on. `on_progress(done, total)` is called
        after each denoising step; setting `cancel` stops the request at the next step with
        `RequestCancelled` (a batch stops once all its requests are cancelled)."""
        if isinstance(params.prompt, list) or isinstance(params.seed, list) or params.prompt_path is not None:
            raise InvalidRequestError("several prompts or seeds make several requests: use generate_all")
        if self._batcher is not None:
            return self._batcher.submit(params, on_progress, cancel).result()
        return self._run_batch([params], on_progress, cancel)[0]

    def generate_all(self, params: SamplingParams) -> list[GenerationResult]:
        """One result per (prompt, seed) of `params` (`runtime.batching.expand_requests`), in
        order, compatible requests batched up to `max_batch_size` outputs."""
        requests = expand_requests(params)
        results: list[GenerationResult | None] = [None] * len(requests)
        for batch in plan_batches(requests, self.max_batch_size):
            for i, result in zip(batch, self._run_batch([requests[i] for i in batch])):
                results[i] = result
        return results

    def _run_pending(self, batch: list[Pending]) -> None:
        """The Batcher's batch: run it, and settle each request's future."""
        def on_progress(done: int, total: int) -> None:
            for item in batch:
                if item.on_progress is not None:
                    item.on_progress(done, total)

        try:
            results = self._run_batch([item.params for item in batch], on_progress,
                                      AllCancelled([item.cancel for item in batch]))
        except BaseException as e:
            for item in batch:
                item.future.set_exception(e)
            return
        for item, result in zip(batch, results):
            item.future.set_result(result)

    def _run_batch(self, requests: list[SamplingParams], on_progress=None, cancel=None) -> list[GenerationResult]:
        """Requests of one batch key through the ranks in one forward; one result each."""
        with self._lock:
            if self._torchrun:
                return self._in_process_rank0(requests, on_progress, cancel)
            if self._local is not None:
                hooks = StepHooks(on_progress, cancel.is_set if cancel is not None else None)
                return self._local.run_batch(requests, hooks)
            return self._on_ranks(requests, on_progress, cancel)

    def call(self, fn: Callable[..., T], *args) -> T:
        """Run `fn(pipeline, *args)` on every rank, between two requests, and return rank 0's
        result: for control operations (loading a LoRA, ...) that every rank must apply alike.
        `fn` must be a module-level function, since it is pickled by name for rank processes."""
        with self._lock:
            if self._torchrun:
                return self._in_process_rank0(RankCall(fn, args))
            if self._local is not None:
                return fn(self._local.pipeline, *args)
            return self._on_ranks(RankCall(fn, args))

    def _in_process_rank0(self, work: list[SamplingParams] | RankCall, on_progress=None, cancel=None):
        """torchrun: this process is rank 0; broadcast the work, run it here with the others."""
        from sglang_diffusion.runtime.worker import agreed_cancel, next_work, serve_work

        request_id = uuid.uuid4().hex
        next_work(0, lambda: (request_id, work))
        hooks = StepHooks(on_progress, agreed_cancel(cancel.is_set if cancel is not None else lambda: False))
        result, failed = serve_work(self._local, work, hooks)
        if failed:
            rank, (name, message, is_user_error, tb) = failed
            raise _rebuild_error(rank, name, message, is_user_error, tb)
        return result

    def _on_ranks(self, work: list[SamplingParams] | RankCall, on_progress=None, cancel=None):
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
