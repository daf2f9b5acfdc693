"""Starting one process per rank on this machine."""

from __future__ import annotations

import multiprocessing as mp
import socket
from typing import Callable, Sequence


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def spawn_ranks(target: Callable, world_size: int, args_for_rank: Callable[[int], Sequence],
                ctx: mp.context.BaseContext) -> list[mp.Process]:
    """Start `target(*args_for_rank(rank))` in a fresh (spawned: CUDA-safe) process per rank."""
    procs = []
    for rank in range(world_size):
        p = ctx.Process(target=target, args=tuple(args_for_rank(rank)), name=f"sglang-rank-{rank}", daemon=True)
        p.start()
        procs.append(p)
    return procs
