"""Rotary position embedding applied to q and k in one call.

Each head vector x [D] is split into D/2 pairs, pair i rotated by the angle whose cosine and
sine are cos[s, i], sin[s, i]:

    (x1, x2) -> (x1 * cos - x2 * sin, x1 * sin + x2 * cos)

with the pairs either interleaved, (x[2i], x[2i+1]) (Wan, HunyuanVideo, FLUX), or half-split,
(x[i], x[i + D/2]) (the GPT-NeoX convention). The tables carry one angle per pair, so any
layout (1D, or the 3D frame/height/width split of video DiTs) is a table the caller builds;
``rope_cos_sin_1d`` and ``rope_cos_sin_3d`` build the usual ones.

Shapes: q [B, S, Hq, D], k [B, S, Hk, D]; cos, sin [S, D/2] float32. Math is fp32; outputs
have the inputs' dtypes.

- ``apply_rope_reference``: plain torch, the spec.
- ``apply_rope``: picks native (csrc/cpu/rope.cpp, csrc/cuda/rope.cu), triton
  (triton_kernels/rope.py) or torch, logging the choice once; the reference runs when autograd
  needs the graph.
- ``torch.ops.sglang_diffusion.apply_rope``: the custom op behind it, with a fake.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from sglang_diffusion.ops import _dispatch, _native


def _check(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    if q.dim() != 4 or k.dim() != 4:
        raise ValueError(f"apply_rope: q and k must be 4-D [B, S, H, D], got {tuple(q.shape)}, {tuple(k.shape)}")
    b, s, _, d = q.shape
    if (k.shape[0], k.shape[1], k.shape[3]) != (b, s, d):
        raise ValueError(f"apply_rope: k's B, S, D must match q's ({b}, {s}, {d}), got {tuple(k.shape)}")
    if d % 2:
        raise ValueError(f"apply_rope: head dim must be even, got {d}")
    for name, t in (("cos", cos), ("sin", sin)):
        if tuple(t.shape) != (s, d // 2):
            raise ValueError(f"apply_rope: {name} must be [S, D/2] = [{s}, {d // 2}], got {tuple(t.shape)}")
        if t.dtype != torch.float32:
            raise ValueError(f"apply_rope: {name} must be float32, got {t.dtype}")


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool) -> torch.Tensor:
    xf = x.float()  # [B, S, H, D]
    c, s = cos[None, :, None, :], sin[None, :, None, :]  # [1, S, 1, D/2]
    if interleaved:
        x1, x2 = xf[..., 0::2], xf[..., 1::2]  # [B, S, H, D/2]
        return torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1).flatten(-2).to(x.dtype)
    half = x.shape[-1] // 2
    x1, x2 = xf[..., :half], xf[..., half:]
    return torch.cat((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1).to(x.dtype)


def apply_rope_reference(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rotated q, rotated k), each in its input's dtype and shape."""
    _check(q, k, cos, sin)
    return _rotate(q, cos, sin, interleaved), _rotate(k, cos, sin, interleaved)


def rope_cos_sin_1d(
    positions: torch.Tensor, dim: int, theta: float = 10000.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [S, dim/2] float32 for 1-D ``positions`` [S]: angle_i = pos * theta^(-2i/dim)."""
    if dim % 2:
        raise ValueError(f"rope_cos_sin_1d: dim must be even, got {dim}")
    inv_freq = theta ** (-torch.arange(0, dim, 2, dtype=torch.float64, device=positions.device) / dim)
    angles = positions.to(torch.float64)[:, None] * inv_freq[None, :]  # [S, dim/2], fp64 for large positions
    return angles.cos().float(), angles.sin().float()


def rope_cos_sin_3d(
    grid: Sequence[int], dims: Sequence[int], theta: float = 10000.0, device=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [F*H*W, sum(dims)/2] for a (frames, height, width) token grid in row-major
    order, each axis rotating its own ``dims[i]`` channels (Wan, HunyuanVideo)."""
    if len(grid) != len(dims):
        raise ValueError(f"rope_cos_sin_3d: grid {tuple(grid)} and dims {tuple(dims)} differ in length")
    axes = torch.meshgrid(*(torch.arange(n, device=device) for n in grid), indexing="ij")
    cos, sin = zip(*(rope_cos_sin_1d(a.reshape(-1), d, theta) for a, d in zip(axes, dims)))
    return torch.cat(cos, dim=-1), torch.cat(sin, dim=-1)  # [F*H*W, sum(dims)/2]


def _why_not(q: torch.Tensor, k: torch.Tensor) -> dict[str, Optional[str]]:
    native = _dispatch.native_why_not(q.device, "rope_out")
    ok_dtypes = (torch.float32, torch.bfloat16, torch.float16)
    if q.dtype not in ok_dtypes or k.dtype != q.dtype:
        native = triton = f"q is {q.dtype}, k is {k.dtype}; the kernels take one of float32, bfloat16, float16"
    else:
        triton = _dispatch.triton_why_not(q.device)
    return {"native": native, "triton": triton}


def _run(impl, q, k, cos, sin, interleaved):
    if impl == "torch":
        q_out, k_out = apply_rope_reference(q, k, cos, sin, interleaved)
        return q_out.contiguous(), k_out.contiguous()
    if impl == "triton":
        from sglang_diffusion.triton_kernels.rope import rope_fwd

        return rope_fwd(q, k, cos, sin, interleaved)
    q_out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    k_out = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    _native.native_library().ops.rope_out(
        q_out, k_out, q.contiguous(), k.contiguous(), cos.contiguous(), sin.contiguous(), interleaved
    )
    return q_out, k_out


@_dispatch.custom_op("sglang_diffusion::apply_rope", mutates_args=())
def _rope_op(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool,
    impl: Optional[str],
) -> tuple[torch.Tensor, torch.Tensor]:
    _check(q, k, cos, sin)
    chosen = _dispatch.choose("apply_rope", impl, _why_not(q, k), f"{q.device.type} {q.dtype}")
    return _run(chosen, q, k, cos, sin, interleaved)


@_rope_op.register_fake
def _(q, k, cos, sin, interleaved, impl):
    _check(q, k, cos, sin)
    return torch.empty_like(q, memory_format=torch.contiguous_format), torch.empty_like(
        k, memory_format=torch.contiguous_format)


def apply_rope(
    q: torch.Tensor,
    k: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    interleaved: bool,
    impl: Optional[str] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotates q [B, S, Hq, D] and k [B, S, Hk, D] by cos, sin [S, D/2] (float32); returns
    contiguous tensors in the inputs' dtypes. ``impl``: None (pick), native, triton or torch."""
    _check(q, k, cos, sin)
    if _dispatch.autograd_runs_reference("apply_rope", q, k, cos, sin):
        return apply_rope_reference(q, k, cos, sin, interleaved)
    return _rope_op(q, k, cos, sin, bool(interleaved), impl)
