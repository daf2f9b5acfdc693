"""sglang_diffusion.ops.all_to_all: each layout change against its reference (native and
torch), the views where B == 1, the exchange (simulated in one process) against slicing the full
tensor, and the process-group wrappers on a one-rank gloo group (a multi-process group costs
~30 s on this CPU; the layout math is what the simulated exchange covers)."""

import pytest
import torch
import torch.distributed as dist

from sglang_diffusion.ops.all_to_all import (
    KINDS,
    all_to_all_head_to_seq,
    all_to_all_seq_to_head,
    head_to_seq_recv,
    head_to_seq_send,
    seq_to_head_recv,
    seq_to_head_send,
    ulysses_permute,
    ulysses_permute_reference,
)
from tests.ops.helpers import randn, requires_native


def input_for(kind, b, s_local, h, d, p, dtype=torch.float32):
    shapes = {
        "seq_to_head_send": (b, s_local, h, d),  # [B, S/P, H, D]
        "seq_to_head_recv": (p, b, s_local, h // p, d),  # [P, B, S/P, H/P, D]
        "head_to_seq_send": (b, s_local * p, h // p, d),  # [B, S, H/P, D]
        "head_to_seq_recv": (p, b, s_local, h // p, d),
    }
    return randn(shapes[kind], 0, dtype=dtype)


@pytest.mark.parametrize("impl", [pytest.param("native", marks=requires_native), "torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("b, s_local, h, d, p", [(2, 5, 6, 16, 2), (3, 3, 8, 7, 4), (1, 4, 4, 8, 2)])
@pytest.mark.parametrize("kind", KINDS)
def test_layout_change_matches_reference(kind, b, s_local, h, d, p, dtype, impl):
    x = input_for(kind, b, s_local, h, d, p, dtype)
    got = ulysses_permute(x, p, kind, impl=impl)
    assert torch.equal(got, ulysses_permute_reference(x, p, kind))


def test_middle_changes_are_views_when_batch_is_one():
    buf = input_for("seq_to_head_recv", 1, 4, 4, 8, 2)
    assert seq_to_head_recv(buf, 2).data_ptr() == buf.data_ptr()
    y = input_for("head_to_seq_send", 1, 4, 4, 8, 2)
    assert head_to_seq_send(y, 2).data_ptr() == y.data_ptr()


def _simulated_exchange(sends):
    """all_to_all_single over a list of per-rank send buffers, in one process."""
    p = len(sends)
    return [torch.stack([sends[src][dst] for src in range(p)]) for dst in range(p)]


@pytest.mark.parametrize("b", [1, 2])
def test_simulated_exchange_gives_head_shards_and_back(b):
    p, s, h, d = 4, 12, 8, 6
    full = randn((b, s, h, d), 1)  # [B, S, H, D]
    shards = list(full.chunk(p, dim=1))  # per rank [B, S/P, H, D]
    received = _simulated_exchange([seq_to_head_send(x, p) for x in shards])
    head_sharded = [seq_to_head_recv(r, p) for r in received]
    for rank, y in enumerate(head_sharded):
        assert torch.equal(y, full[:, :, rank * h // p:(rank + 1) * h // p])
    back = _simulated_exchange([head_to_seq_send(y, p) for y in head_sharded])
    for rank, r in enumerate(back):
        assert torch.equal(head_to_seq_recv(r, p), shards[rank])


def test_rejects_heads_not_divisible_by_the_degree():
    with pytest.raises(ValueError, match="num_heads 6 is not divisible by the Ulysses degree 4"):
        seq_to_head_send(randn((1, 2, 6, 8), 0), 4)


def test_custom_op_passes_opcheck():
    x = input_for("seq_to_head_send", 2, 3, 4, 8, 2)
    torch.library.opcheck(torch.ops.sglang_diffusion.ulysses_permute.default, (x, 2, "seq_to_head_send", None))


def test_process_group_wrappers_round_trip_on_one_rank(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        x = randn((2, 5, 4, 8), 4)  # [B, S, H, D]: one rank holds everything
        y = all_to_all_seq_to_head(x)
        assert torch.equal(y, x) and torch.equal(all_to_all_head_to_seq(y), x)
    finally:
        dist.destroy_process_group()
