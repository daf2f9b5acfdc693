"""Attention forward with its log-sum-exp, non-causal (diffusion), in the [B, S, H, D] layout.

    out[b, i, h]  = sum_j softmax_j(scale * q[b, i, h] . k[b, j, h]) v[b, j, h]
    lse[b, h, i]  = log sum_j exp(scale * q[b, i, h] . k[b, j, h])      (natural log, fp32)

Shapes: q [B, Sq, H, D]; k, v [B, Sk, H, D] (Sk may differ from Sq: cross-attention);
out [B, Sq, H, D] in q's dtype; lse [B, H, Sq] float32, what ring attention needs to merge
partial results. ``scale`` defaults to D ** -0.5.

- ``attention_reference``: plain torch in fp32, the spec; tests and benchmarks import it.
- ``attention``: what backends and models call. Implementations (``backend=``):
  ``native`` (csrc/cpu/attention.cpp: a tiled online-softmax kernel; csrc/cuda/attention.cu
  when _C is built with CUDA), ``triton`` (triton_kernels/attention.py, FA2-style, CUDA) and
  ``torch`` (the reference's math, chunked over queries so the score matrix stays small).
  None picks: CUDA -> triton, native, torch; CPU -> native, torch. The choice and its reason
  are logged once. When autograd needs the graph, the torch path runs.
- ``torch.ops.sglang_diffusion.attention``: the ``torch.library`` custom op behind it, with a
  fake implementation, so ``torch.compile`` traces through.
"""

from __future__ import annotations

from typing import Optional

import torch

from sglang_diffusion.ops import _dispatch, _native

# The torch path's score chunk: at most this many fp32 scores at once (256 MiB).
_TORCH_CHUNK_SCORES = 1 << 26


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"attention: q, k, v must be 4-D [B, S, H, D], got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if k.shape != v.shape:
        raise ValueError(f"attention: k and v must have one shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    b, _, h, d = q.shape
    if (k.shape[0], k.shape[2], k.shape[3]) != (b, h, d):
        raise ValueError(f"attention: k's B, H, D must match q's ({b}, {h}, {d}), got shape {tuple(k.shape)}")
    if not (q.dtype == k.dtype == v.dtype) or not q.is_floating_point():
        raise ValueError(f"attention: q, k, v must share one floating dtype, got {q.dtype}, {k.dtype}, {v.dtype}")


def default_scale(head_dim: int) -> float:
    return head_dim ** -0.5


def empty_outputs(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Uninitialised (out [B, Sq, H, D] in q's dtype, lse [B, H, Sq] float32) for q: what the
    attention ops return (their fake implementations too)."""
    b, sq, h, d = q.shape
    return q.new_empty(b, sq, h, d), q.new_empty(b, h, sq, dtype=torch.float32)


def attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: Optional[float] = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(out [B, Sq, H, D] in q's dtype, lse [B, H, Sq] float32), computed in fp32."""
    _check(q, k, v)
    scale = default_scale(q.shape[-1]) if scale is None else scale
    qf, kf, vf = (t.float().transpose(1, 2) for t in (q, k, v))  # [B, H, S, D]
    s = (qf @ kf.transpose(-1, -2)) * scale  # [B, H, Sq, Sk]
    lse = torch.logsumexp(s, dim=-1)  # [B, H, Sq]
    out = torch.exp(s - lse[..., None]) @ vf  # [B, H, Sq, D]
    return out.transpose(1, 2).to(q.dtype), lse


def _attention_torch(q, k, v, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's math, chunked over queries: memory O(chunk * Sk), not O(Sq * Sk)."""
    b, sq, h, d = q.shape
    sk = k.shape[1]
    kf, vf = (t.float().transpose(1, 2) for t in (k, v))  # [B, H, Sk, D]
    out, lse = empty_outputs(q)
    chunk = max(1, _TORCH_CHUNK_SCORES // max(1, b * h * sk))
    for start in range(0, sq, chunk):
        end = min(sq, start + chunk)
        qf = q[:, start:end].float().transpose(1, 2)  # [B, H, c, D]
        s = (qf @ kf.transpose(-1, -2)) * scale  # [B, H, c, Sk]
        part_lse = torch.logsumexp(s, dim=-1)  # [B, H, c]
        out[:, start:end] = (torch.exp(s - part_lse[..., None]) @ vf).transpose(1, 2).to(q.dtype)
        lse[:, :, start:end] = part_lse
    return out, lse


def _why_not(q: torch.Tensor, native_op: str = "attention_out") -> dict[str, Optional[str]]:
    """Per implementation, None or why it cannot run q (ops/sliding_tile_attention.py shares it)."""
    native = _dispatch.native_why_not(q.device, native_op)
    if native is None and q.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        native = f"q is {q.dtype}; the _C kernel takes float32, bfloat16 or float16"
    triton = _dispatch.triton_why_not(q.device)
    if triton is None and q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        triton = f"q is {q.dtype}; the Triton kernel takes float16, bfloat16 or float32"
    if triton is None and q.shape[-1] > 256:
        triton = f"head dim {q.shape[-1]} > 256"
    order = ("triton", "native") if q.device.type == "cuda" else ("native", "triton")
    reasons = {"native": native, "triton": triton}
    return {name: reasons[name] for name in order}


def _run(impl: str, q, k, v, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    if impl == "torch":
        return _attention_torch(q, k, v, scale)
    if impl == "triton":
        from sglang_diffusion.triton_kernels.attention import attention_fwd

        return attention_fwd(q, k, v, scale)
    out, lse = empty_outputs(q)
    # The kernel reads any B/S/H strides (e.g. views into one fused QKV projection); only D
    # must be contiguous.
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    _native.native_library().ops.attention_out(out, lse, q, k, v, scale)
    return out, lse


@_dispatch.custom_op("sglang_diffusion::attention", mutates_args=())
def _attention_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, impl: Optional[str]
) -> tuple[torch.Tensor, torch.Tensor]:
    _check(q, k, v)
    detail = f"{q.device.type} {q.dtype}, head dim {q.shape[-1]}"
    chosen = _dispatch.choose("attention", impl, _why_not(q), detail)
    return _run(chosen, q, k, v, scale)


@_attention_op.register_fake
def _(q, k, v, scale, impl):
    _check(q, k, v)
    return empty_outputs(q)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: Optional[float] = None,
              backend: Optional[str] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """q [B, Sq, H, D], k, v [B, Sk, H, D] -> (out [B, Sq, H, D] in q's dtype, lse [B, H, Sq]
    float32). ``backend``: None (pick), ``native``, ``triton`` or ``torch``; one that cannot run
    these inputs raises ValueError with the reason."""
    _check(q, k, v)
    scale = default_scale(q.shape[-1]) if scale is None else float(scale)
    if _dispatch.autograd_runs_reference("attention", q, k, v):
        return attention_reference(q, k, v, scale)
    return _attention_op(q, k, v, scale, backend)
