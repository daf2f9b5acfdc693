"""The layout changes around Ulysses sequence parallelism's ``all_to_all_single``, one pass each.

With P ranks, attention inputs arrive sequence-sharded, x [B, S/P, H, D] on each rank, and
attention wants them head-sharded, [B, S, H/P, D]. ``all_to_all_single`` sends the i-th of P
equal chunks of dim 0 to rank i, so each side of the exchange needs one copy:

    seq -> head   send = seq_to_head_send(x, P)       [B, S/P, H, D]   -> [P, B, S/P, H/P, D]
                  (all_to_all_single: chunk p of send goes to rank p)
                  y    = seq_to_head_recv(recv, P)    [P, B, S/P, H/P, D] -> [B, S, H/P, D]
    head -> seq   send = head_to_seq_send(y, P)       [B, S, H/P, D]   -> [P, B, S/P, H/P, D]
                  x    = head_to_seq_recv(recv, P)    [P, B, S/P, H/P, D] -> [B, S/P, H, D]

Each function is a single strided copy, never a chain of reshape/permute/contiguous copies;
when B == 1, seq_to_head_recv and head_to_seq_send are pure views and copy nothing. The copy
is torch's on the CPU (measured as fast as or faster than the native row copy) and the native
kernel (csrc/cuda/all_to_all.cu) on CUDA when _C is built with it. ``all_to_all_seq_to_head`` and
``all_to_all_head_to_seq`` run the whole exchange on a process group.

- ``*_reference``: plain torch (reshape + permute + contiguous), the spec.
- the dispatched functions: native (csrc/cuda/all_to_all.cu; csrc/cpu/all_to_all.cpp when asked
  for) or torch, through the custom op ``torch.ops.sglang_diffusion.ulysses_permute`` (with a
  fake).
"""

from __future__ import annotations

from typing import Optional

import torch

from sglang_diffusion.ops import _dispatch, _native

# The permutations, as (view shape of the input, permutation, output shape) builders. Every
# one maps a 5-D view of the input to the output's order; dims: P, B, s = S/P, h = H/P, D.


def _dims_seq_sharded(x: torch.Tensor, p: int) -> tuple[int, int, int, int]:
    if x.dim() != 4:
        raise ValueError(f"expected [B, S/P, H, D], got shape {tuple(x.shape)}")
    b, s, h, d = x.shape
    if h % p:
        raise ValueError(f"num_heads {h} is not divisible by the Ulysses degree {p}")
    return b, s, h // p, d


def _dims_head_sharded(x: torch.Tensor, p: int) -> tuple[int, int, int, int]:
    if x.dim() != 4:
        raise ValueError(f"expected [B, S, H/P, D], got shape {tuple(x.shape)}")
    b, s, h, d = x.shape
    if s % p:
        raise ValueError(f"sequence length {s} is not divisible by the Ulysses degree {p}")
    return b, s // p, h, d


def _dims_buffer(buf: torch.Tensor, p: int) -> tuple[int, int, int, int]:
    if buf.dim() != 5 or buf.shape[0] != p:
        raise ValueError(f"expected a [P={p}, B, S/P, H/P, D] buffer, got shape {tuple(buf.shape)}")
    return tuple(buf.shape[1:])


# kind -> (view of the input as 5-D, the permutation to the output's dim order)
def _plan(kind: str, x: torch.Tensor, p: int):
    if kind == "seq_to_head_send":
        b, s, h, d = _dims_seq_sharded(x, p)
        return x.reshape(b, s, p, h, d), (2, 0, 1, 3, 4), (p, b, s, h, d)
    if kind == "seq_to_head_recv":
        b, s, h, d = _dims_buffer(x, p)
        return x, (1, 0, 2, 3, 4), (b, p * s, h, d)
    if kind == "head_to_seq_send":
        b, s, h, d = _dims_head_sharded(x, p)
        return x.reshape(b, p, s, h, d), (1, 0, 2, 3, 4), (p, b, s, h, d)
    if kind == "head_to_seq_recv":
        b, s, h, d = _dims_buffer(x, p)
        return x, (1, 2, 0, 3, 4), (b, s, p * h, d)
    raise ValueError(f"unknown layout change {kind!r}")


KINDS = ("seq_to_head_send", "seq_to_head_recv", "head_to_seq_send", "head_to_seq_recv")


def ulysses_permute_reference(x: torch.Tensor, world_size: int, kind: str) -> torch.Tensor:
    """The layout change ``kind`` (one of KINDS) as reshape + permute + contiguous."""
    view, perm, out_shape = _plan(kind, x, world_size)
    return view.permute(perm).contiguous().reshape(out_shape)


def _why_not(x: torch.Tensor) -> dict[str, Optional[str]]:
    return {"native": _dispatch.native_why_not(x.device, "permute_rows_out")}


@_dispatch.custom_op("sglang_diffusion::ulysses_permute", mutates_args=())
def _ulysses_permute_op(x: torch.Tensor, world_size: int, kind: str, impl: Optional[str]) -> torch.Tensor:
    view, perm, out_shape = _plan(kind, x, world_size)
    if impl is None and x.device.type == "cpu":
        # Measured: on the CPU torch's strided copy is as fast or faster (the native row copy
        # ran at 0.84-0.93x, benchmarks/kernels/all_to_all.py), so it is the CPU default.
        chosen = "torch"
        if not torch.compiler.is_compiling():
            _dispatch.log_choice("ulysses_permute", "torch", "cpu: torch's strided copy measured fastest")
    else:
        chosen = _dispatch.choose("ulysses_permute", impl, _why_not(x), f"{x.device.type} {x.dtype}")
    out = torch.empty(out_shape, dtype=x.dtype, device=x.device)  # never an alias of x
    src = view.permute(perm)  # [.., D] in the output's order, strided
    if chosen == "torch":
        out.view(src.shape).copy_(src)
    else:  # the kernel copies D-rows at a time
        _native.native_library().ops.permute_rows_out(out.view(src.shape), src)
    return out


@_ulysses_permute_op.register_fake
def _(x, world_size, kind, impl):
    _, _, out_shape = _plan(kind, x, world_size)
    return x.new_empty(out_shape)


def _is_free(kind: str, x: torch.Tensor, world_size: int) -> bool:
    """B == 1 turns the two middle changes into views."""
    return kind in ("seq_to_head_recv", "head_to_seq_send") and x.shape[0 if kind == "head_to_seq_send" else 1] == 1


def ulysses_permute(x: torch.Tensor, world_size: int, kind: str, impl: Optional[str] = None) -> torch.Tensor:
    """The layout change ``kind`` in one pass (a view where it is free), dispatched."""
    view, perm, out_shape = _plan(kind, x, world_size)
    if _is_free(kind, x, world_size) and x.is_contiguous():
        return view.permute(perm).reshape(out_shape)  # B == 1: P and B swap freely: a view
    if _dispatch.needs_autograd(x):
        return ulysses_permute_reference(x, world_size, kind)
    return _ulysses_permute_op(x, world_size, kind, impl)


def seq_to_head_send(x: torch.Tensor, world_size: int) -> torch.Tensor:
    """[B, S/P, H, D] -> the send buffer [P, B, S/P, H/P, D] (chunk p: heads of rank p)."""
    return ulysses_permute(x, world_size, "seq_to_head_send")


def seq_to_head_recv(buf: torch.Tensor, world_size: int) -> torch.Tensor:
    """The received [P, B, S/P, H/P, D] (chunk p: rank p's tokens) -> [B, S, H/P, D]."""
    return ulysses_permute(buf, world_size, "seq_to_head_recv")


def head_to_seq_send(x: torch.Tensor, world_size: int) -> torch.Tensor:
    """[B, S, H/P, D] -> the send buffer [P, B, S/P, H/P, D] (chunk p: tokens of rank p)."""
    return ulysses_permute(x, world_size, "head_to_seq_send")


def head_to_seq_recv(buf: torch.Tensor, world_size: int) -> torch.Tensor:
    """The received [P, B, S/P, H/P, D] (chunk p: rank p's heads) -> [B, S/P, H, D]."""
    return ulysses_permute(buf, world_size, "head_to_seq_recv")


def _exchange(send: torch.Tensor, group) -> torch.Tensor:
    import torch.distributed as dist

    send = send.contiguous()
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)
    return recv


def all_to_all_seq_to_head(x: torch.Tensor, group=None) -> torch.Tensor:
    """Ulysses forward exchange on ``group``: [B, S/P, H, D] per rank -> [B, S, H/P, D]."""
    import torch.distributed as dist

    p = dist.get_world_size(group)
    return seq_to_head_recv(_exchange(seq_to_head_send(x, p), group), p)


def all_to_all_head_to_seq(x: torch.Tensor, group=None) -> torch.Tensor:
    """Ulysses backward exchange on ``group``: [B, S, H/P, D] per rank -> [B, S/P, H, D]."""
    import torch.distributed as dist

    p = dist.get_world_size(group)
    return head_to_seq_recv(_exchange(head_to_seq_send(x, p), group), p)
