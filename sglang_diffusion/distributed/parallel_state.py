"""Process groups: the world of the rank processes and, inside it, the groups a request runs on.

    world = replicas x cfg x ring x ulysses        (the DiT: sequence and CFG parallelism)
    world = (world / tp) x tp                      (the text encoder: tensor parallelism)

SP (sequence parallelism) is ulysses x ring: Ulysses ranks are adjacent (their all-to-all moves
the most bytes, so they get the fastest links: the same node, NVLink), ring groups span the
Ulysses groups, CFG groups span both. A world rank is

    rank = ((replica * cfg + cfg_rank) * ring + ring_rank) * ulysses + ulysses_rank

and its place in the SP group (the index of its token shard) is ring_rank * ulysses +
ulysses_rank. Tensor parallelism is for the text encoder only, which runs before the DiT, so its
groups (consecutive blocks of tp ranks) reuse the same ranks instead of multiplying the world.
When sp x cfg < world, the replicas compute the same request (there is no data parallelism yet).

gloo on a CPU, NCCL on CUDA (`Platform.dist_backend`). Groups are the package's only global
state: `initialize_model_parallel` builds them once per process (every rank must call it, in
the same order) and `parallel_groups()` returns them; with one rank they are trivial.
"""

from __future__ import annotations

import datetime
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from sglang_diffusion.errors import ConfigError

logger = logging.getLogger(__name__)


# ---- the world -------------------------------------------------------------------------------


def init_world(rank: int, world_size: int, init_addr: str | None, backend: str, timeout_s: float = 600) -> None:
    """Join the world as `rank` of `world_size`, rank 0 listening at `init_addr` (host:port);
    None: torchrun's environment gives all three (MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE)."""
    timeout = datetime.timedelta(seconds=timeout_s)
    if init_addr is None:
        dist.init_process_group(backend=backend, init_method="env://", timeout=timeout)
    else:
        dist.init_process_group(backend=backend, init_method=f"tcp://{init_addr}", rank=rank,
                                world_size=world_size, timeout=timeout)


def destroy_world() -> None:
    global _GROUPS
    _GROUPS = None
    if dist.is_initialized():
        dist.destroy_process_group()


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def world_rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def any_rank(flag: bool) -> bool:
    """True when `flag` is true on any rank of the world (a collective: every rank calls it).
    Decisions that change what the ranks run next (cancelling a request) must be taken alike
    everywhere, or some ranks wait in a collective the others have left."""
    if world_size() == 1:
        return flag
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([int(flag)], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


# ---- the layout ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParallelLayout:
    world_size: int = 1
    tp: int = 1
    ulysses: int = 1
    ring: int = 1
    cfg: int = 1

    @property
    def sp(self) -> int:
        return self.ulysses * self.ring

    @property
    def replicas(self) -> int:
        return self.world_size // (self.sp * self.cfg)

    def describe(self) -> str:
        text = (f"{self.world_size} rank(s): sp={self.sp} (ulysses={self.ulysses} x ring={self.ring}), "
                f"cfg={self.cfg}, tp={self.tp} (text encoder)")
        if self.replicas > 1:
            text += f"; {self.replicas} replicas each compute the whole request"
        return text


def resolve_layout(args, *, num_heads: int | None = None, sequence_parallel: bool = True
                   ) -> tuple[ParallelLayout, str]:
    """The layout the ranks run and why. `num_heads`: the DiT's attention heads (the Ulysses
    degree must divide them); `sequence_parallel`: whether the pipeline can split a request
    (native pipelines) or only replicate it (the diffusers backend).

    Given degrees are kept as given (ServerArgs validated that they divide num_gpus). With only
    num_gpus, the ranks left after CFG parallelism all go to SP: Ulysses takes the largest
    degree that divides the heads, ring the rest."""
    n, cfg, tp = args.num_gpus, args.cfg_degree, args.tp_size
    given = args.sp_degree is not None or args.ulysses_degree is not None or args.ring_degree is not None
    if given or not sequence_parallel or n == 1:
        _, ulysses, ring = args.sp_layout
        layout = ParallelLayout(n, tp, ulysses, ring, cfg)
        reason = "as given" if given or n == 1 else "the pipeline cannot split a request; ranks replicate it"
    else:
        sp = n // cfg
        ulysses = math.gcd(sp, num_heads) if num_heads else sp
        layout = ParallelLayout(n, tp, ulysses, sp // ulysses, cfg)
        reason = (f"default for num_gpus={n}: every rank left after cfg={cfg} goes to sequence parallelism; "
                  f"ulysses = gcd({sp}, {num_heads} heads) = {ulysses}, ring the rest")
    if num_heads is not None and num_heads % layout.ulysses:
        raise ConfigError(f"ulysses_degree {layout.ulysses} does not divide the DiT's {num_heads} attention heads "
                          f"(Ulysses gives each rank whole heads); use a ring degree for the rest, e.g. "
                          f"--ulysses-degree {math.gcd(layout.ulysses, num_heads)} "
                          f"--ring-degree {layout.sp // math.gcd(layout.ulysses, num_heads)}")
    return layout, reason


# ---- groups ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RankGroup:
    """One group this rank belongs to: its world ranks in group order, and this rank's index."""

    ranks: tuple[int, ...]
    rank: int  # index of this process in `ranks`
    group: object = None  # the torch ProcessGroup; None when the group is this rank alone

    @property
    def size(self) -> int:
        return len(self.ranks)

    @classmethod
    def alone(cls) -> RankGroup:
        return cls((world_rank(),), 0, None)


@dataclass(frozen=True)
class ParallelGroups:
    layout: ParallelLayout
    tp: RankGroup
    sp: RankGroup  # ordered by token shard: ring_rank * ulysses + ulysses_rank
    ulysses: RankGroup
    ring: RankGroup
    cfg: RankGroup

    @classmethod
    def single(cls) -> ParallelGroups:
        alone = RankGroup.alone()
        return cls(ParallelLayout(world_size()), alone, alone, alone, alone, alone)


def group_rank_lists(layout: ParallelLayout) -> dict[str, list[tuple[int, ...]]]:
    """Every group of each kind, as world ranks in group order (a pure function: tests read it)."""
    u, r, c, reps = layout.ulysses, layout.ring, layout.cfg, layout.replicas

    def rank(rep, ci, ri, ui):
        return ((rep * c + ci) * r + ri) * u + ui

    lists: dict[str, list[tuple[int, ...]]] = {"ulysses": [], "ring": [], "sp": [], "cfg": [], "tp": []}
    for rep in range(reps):
        for ci in range(c):
            lists["sp"].append(tuple(rank(rep, ci, ri, ui) for ri in range(r) for ui in range(u)))
            for ri in range(r):
                lists["ulysses"].append(tuple(rank(rep, ci, ri, ui) for ui in range(u)))
            for ui in range(u):
                lists["ring"].append(tuple(rank(rep, ci, ri, ui) for ri in range(r)))
        for ri in range(r):
            for ui in range(u):
                lists["cfg"].append(tuple(rank(rep, ci, ri, ui) for ci in range(c)))
    tp = layout.tp
    lists["tp"] = [tuple(range(start, start + tp)) for start in range(0, layout.world_size, tp)]
    return lists


_GROUPS: ParallelGroups | None = None


def initialize_model_parallel(layout: ParallelLayout, ranks: Sequence[int] | None = None) -> ParallelGroups | None:
    """Build every group of `layout` (a collective: every rank of the world calls it with the
    same arguments). `ranks`: the world ranks the layout runs on (default: all of them; tests run
    a 2-rank layout on part of a 4-rank world). None on a rank outside `ranks`."""
    global _GROUPS
    ranks = tuple(range(world_size())) if ranks is None else tuple(ranks)
    if layout.world_size != len(ranks):
        raise ConfigError(f"the parallel layout needs {layout.world_size} ranks, there are {len(ranks)}")
    me = world_rank()
    mine: dict[str, RankGroup] = {}
    for kind, lists in group_rank_lists(layout).items():
        for members in lists:
            members = tuple(ranks[i] for i in members)
            # new_group is collective over the world: every rank creates every group, in order
            group = dist.new_group(list(members)) if len(members) > 1 else None
            if me in members:
                mine[kind] = RankGroup(members, members.index(me), group)
    if me not in ranks:
        return None
    _GROUPS = ParallelGroups(layout, **mine)
    return _GROUPS


def all_gather(x: torch.Tensor, group: RankGroup) -> list[torch.Tensor]:
    """Every rank's x, in group order."""
    if group.size == 1:
        return [x]
    parts = [torch.empty_like(x) for _ in range(group.size)]
    dist.all_gather(parts, x.contiguous(), group=group.group)
    return parts


def all_reduce_max(value: float, group: RankGroup) -> float:
    """The largest of the ranks' values (so that decisions made from timings agree)."""
    if group.size == 1:
        return value
    device = "cuda" if dist.get_backend(group.group) == "nccl" else "cpu"
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group.group)
    return t.item()


def ensure_model_parallel(layout: ParallelLayout) -> ParallelGroups:
    """The groups of `layout`: those already built for it, else built now over the whole world."""
    if _GROUPS is not None and _GROUPS.layout == layout:
        return _GROUPS
    if layout.world_size == 1:
        return ParallelGroups.single()
    return initialize_model_parallel(layout)


def setup_parallel(args, *, num_heads: int | None = None, sequence_parallel: bool = True) -> ParallelGroups:
    """Resolve the layout of `args` for a pipeline (see `resolve_layout`), log it with its reason,
    and return its groups (built on first use)."""
    layout, reason = resolve_layout(args, num_heads=num_heads, sequence_parallel=sequence_parallel)
    if layout.world_size > 1:
        logger.info("parallel layout: %s (%s)", layout.describe(), reason)
    return ensure_model_parallel(layout)


def parallel_groups() -> ParallelGroups:
    """The groups built by `initialize_model_parallel`, or the trivial ones of a single rank."""
    return _GROUPS if _GROUPS is not None else ParallelGroups.single()
