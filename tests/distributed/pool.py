"""A pool of rank processes that stays up across tests: starting 4 processes that import torch
costs several seconds on a 2-core CPU, so a module runs all its multi-rank cases on one pool.

`RankPool(n).run(fn, *args)` runs the module-level function `fn(*args)` on every rank at once (the
world group initialized: gloo on CPU, NCCL with one CUDA device per rank) and returns the per-rank
results. A case that fails on one rank while the others wait in a collective cannot hang the
suite: past the deadline the pool is killed and the call fails; `healthy` then says to build a
new one.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import time
import traceback

import torch

_DEVICE = torch.device("cpu")


def device() -> torch.device:
    """The device of this rank (inside a pool worker)."""
    return _DEVICE


def _worker(rank: int, world_size: int, addr: str, backend: str, tasks, results) -> None:
    global _DEVICE
    from sglang_diffusion.distributed.parallel_state import destroy_world, init_world

    torch.set_num_threads(1)  # ranks share the CPU's cores: one thread each, no oversubscription
    if backend == "nccl":
        _DEVICE = torch.device("cuda", rank)
        torch.cuda.set_device(_DEVICE)
    init_world(rank, world_size, addr, backend, timeout_s=120)
    try:
        while (task := tasks.get()) is not None:
            fn, args = task
            try:
                results.put((rank, True, fn(*args)))
            except BaseException:
                results.put((rank, False, traceback.format_exc()))
    finally:
        destroy_world()


class RankPool:
    def __init__(self, world_size: int, backend: str = "gloo"):
        from sglang_diffusion.distributed.launch import free_port

        ctx = mp.get_context("spawn")
        self.world_size, self.backend = world_size, backend
        self._tasks = [ctx.Queue() for _ in range(world_size)]
        self._results = ctx.Queue()
        addr = f"127.0.0.1:{free_port()}"
        self._procs = [ctx.Process(target=_worker, args=(r, world_size, addr, backend, self._tasks[r], self._results),
                                   daemon=True, name=f"test-rank-{r}") for r in range(world_size)]
        for p in self._procs:
            p.start()
        self.healthy = True

    def run(self, fn, *args, timeout: float = 180.0) -> list:
        """fn(*args) on every rank; the results in rank order. A failure on any rank raises with
        that rank's traceback."""
        assert self.healthy, "this pool was killed by an earlier failure"
        for q in self._tasks:
            q.put((fn, args))
        out, errors = [None] * self.world_size, []
        deadline = time.monotonic() + timeout
        first_error = None
        for _ in range(self.world_size):
            while True:
                try:
                    rank, ok, value = self._results.get(timeout=1.0)
                    break
                except queue.Empty:
                    dead = [r for r, p in enumerate(self._procs) if not p.is_alive()]
                    # once a rank has failed, the others may wait forever in a collective it left
                    stuck = first_error is not None and time.monotonic() > first_error + 20
                    if dead or stuck or time.monotonic() > deadline:
                        self.close(kill=True)
                        why = f"ranks {dead} died" if dead else "timed out" if not stuck else "hung after a failure"
                        raise RuntimeError(f"{fn.__name__} {why}; errors so far:\n" + "\n".join(errors))
            if ok:
                out[rank] = value
            else:
                errors.append(f"rank {rank}:\n{value}")
                first_error = first_error or time.monotonic()
        if errors:
            raise RuntimeError(f"{fn.__name__} failed:\n" + "\n".join(errors))
        return out

    def close(self, kill: bool = False) -> None:
        self.healthy = False
        if not kill:
            for q in self._tasks:
                q.put(None)
            for p in self._procs:
                p.join(timeout=10)
        for p in self._procs:
            if p.is_alive():
                p.kill()
                p.join(timeout=5)


POOL_SIZE = 4  # the largest layout the tests run; smaller ones run on its first ranks


def nccl_ranks() -> int:
    return min(POOL_SIZE, torch.cuda.device_count()) if torch.cuda.is_available() else 0


def backends(n: int) -> list:
    """gloo always; NCCL too where n CUDA devices are present (marked gpu)."""
    import pytest

    nccl = pytest.param("nccl", marks=[pytest.mark.gpu, pytest.mark.skipif(
        nccl_ranks() < n, reason=f"NCCL needs {n} CUDA devices")])
    return ["gloo", nccl]


class PoolCache:
    """One pool per backend for the session (gloo: 4 ranks; NCCL: one per CUDA device, up to 4),
    rebuilt when a failure killed it. A case for n ranks runs on ranks 0..n-1 of it."""

    def __init__(self):
        self._pools: dict[str, RankPool] = {}

    def __call__(self, backend: str = "gloo") -> RankPool:
        pool = self._pools.get(backend)
        if pool is None or not pool.healthy:
            pool = self._pools[backend] = RankPool(POOL_SIZE if backend == "gloo" else nccl_ranks(), backend)
        return pool

    def close(self) -> None:
        for pool in self._pools.values():
            if pool.healthy:
                pool.close(kill=True)  # nothing to flush; a graceful gloo teardown takes seconds
        self._pools.clear()
