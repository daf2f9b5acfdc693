"""Process groups. Today: the world group of the rank processes (gloo on CPU, NCCL on CUDA).
The TP / SP (Ulysses x ring) / CFG subgroups are built here when sequence parallelism lands."""

from __future__ import annotations

import datetime

import torch.distributed as dist


def init_world(rank: int, world_size: int, init_addr: str, backend: str, timeout_s: float = 600) -> None:
    dist.init_process_group(backend=backend, init_method=f"tcp://{init_addr}", rank=rank,
                            world_size=world_size, timeout=datetime.timedelta(seconds=timeout_s))


def destroy_world() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
