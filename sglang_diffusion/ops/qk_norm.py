"""RMS norm of the query and key heads, both in one call.

    across_heads=True:   y = x / sqrt(mean over H*D of x^2 + eps) * weight   (weight [H*D])
                         Wan's norm_q / norm_k, applied to the whole projection
    across_heads=False:  y = x / sqrt(mean over D of x^2 + eps) * weight     (weight [D])
                         per head, FLUX / HunyuanVideo / Qwen-Image

Shapes: q [B, S, Hq, D], k [B, S', Hk, D] (k may have its own length: cross-attention);
weights as above or None (no affine). Math is fp32; outputs have the inputs' dtypes.

- ``qk_rms_norm_reference``: plain torch, the spec.
- ``qk_rms_norm``: picks native (csrc/cpu/qk_norm.cpp, csrc/cuda/qk_norm.cu), triton
  (triton_kernels/qk_norm.py) or torch, logging the choice once.
- ``torch.ops.sglang_diffusion.qk_rms_norm``: the custom op behind it, with a fake.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from sglang_diffusion.ops import _dispatch, _native


def _check_one(name: str, x: torch.Tensor, w: Optional[torch.Tensor], across_heads: bool) -> None:
    if x.dim() != 4:
        raise ValueError(f"qk_rms_norm: {name} must be 4-D [B, S, H, D], got {tuple(x.shape)}")
    width = x.shape[2] * x.shape[3] if across_heads else x.shape[3]
    if w is not None and tuple(w.shape) != (width,):
        what = "H*D" if across_heads else "D"
        raise ValueError(f"qk_rms_norm: weight for {name} must be [{what}] = [{width}], got {tuple(w.shape)}")


def _check(q, k, weight_q, weight_k, across_heads) -> None:
    _check_one("q", q, weight_q, across_heads)
    _check_one("k", k, weight_k, across_heads)


def _rms(x: torch.Tensor, w: Optional[torch.Tensor], eps: float, across_heads: bool) -> torch.Tensor:
    b, s, h, d = x.shape
    xf = x.float()
    wf = None if w is None else w.float()
    if across_heads:
        return F.rms_norm(xf.reshape(b, s, h * d), (h * d,), wf, eps).reshape(b, s, h, d).to(x.dtype)
    return F.rms_norm(xf, (d,), wf, eps).to(x.dtype)


def qk_rms_norm_reference(q: torch.Tensor, k: torch.Tensor, weight_q: Optional[torch.Tensor],
                          weight_k: Optional[torch.Tensor], eps: float,
                          across_heads: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(normed q, normed k), each in its input's dtype and shape."""
    _check(q, k, weight_q, weight_k, across_heads)
    return _rms(q, weight_q, eps, across_heads), _rms(k, weight_k, eps, across_heads)


def _why_not(q, k, weights) -> dict[str, Optional[str]]:
    ok = (torch.float32, torch.bfloat16, torch.float16)
    bad = None
    if q.dtype not in ok or k.dtype not in ok:
        bad = f"q is {q.dtype}, k is {k.dtype}; the kernels take float32, bfloat16 or float16"
    elif any(w is not None and not w.is_floating_point() for w in weights):
        bad = "a weight is not a float tensor"
    native = bad or _dispatch.native_why_not(q.device, "qk_rms_norm_out")
    triton = bad or _dispatch.triton_why_not(q.device)
    return {"native": native, "triton": triton}


def _run(impl, q, k, weight_q, weight_k, eps, across_heads):
    if impl == "torch":
        q_out, k_out = qk_rms_norm_reference(q, k, weight_q, weight_k, eps, across_heads)
        return q_out.contiguous(), k_out.contiguous()
    if impl == "triton":
        from sglang_diffusion.triton_kernels.qk_norm import qk_rms_norm_fwd

        return qk_rms_norm_fwd(q, k, weight_q, weight_k, eps, across_heads)
    q_out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    k_out = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    ops = _native.native_library().ops
    ops.qk_rms_norm_out(q_out, q.contiguous(), weight_q, eps, across_heads)
    ops.qk_rms_norm_out(k_out, k.contiguous(), weight_k, eps, across_heads)
    return q_out, k_out


@_dispatch.custom_op("sglang_diffusion::qk_rms_norm", mutates_args=())
def _qk_rms_norm_op(q: torch.Tensor, k: torch.Tensor, weight_q: Optional[torch.Tensor],
                    weight_k: Optional[torch.Tensor], eps: float, across_heads: bool,
                    impl: Optional[str]) -> tuple[torch.Tensor, torch.Tensor]:
    _check(q, k, weight_q, weight_k, across_heads)
    why_not = _why_not(q, k, (weight_q, weight_k))
    chosen = _dispatch.choose("qk_rms_norm", impl, why_not, f"{q.device.type} {q.dtype}")
    return _run(chosen, q, k, weight_q, weight_k, eps, across_heads)


@_qk_rms_norm_op.register_fake
def _(q, k, weight_q, weight_k, eps, across_heads, impl):
    _check(q, k, weight_q, weight_k, across_heads)
    return torch.empty_like(q, memory_format=torch.contiguous_format), torch.empty_like(
        k, memory_format=torch.contiguous_format)


def qk_rms_norm(q: torch.Tensor, k: torch.Tensor, weight_q: Optional[torch.Tensor],
                weight_k: Optional[torch.Tensor], eps: float, across_heads: bool,
                impl: Optional[str] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """RMS-normalises q [B, S, Hq, D] and k [B, S', Hk, D] over H*D (``across_heads``, weights
    [H*D]) or per head over D (weights [D]); returns contiguous tensors in the inputs' dtypes.
    ``impl``: None (pick), native, triton or torch."""
    _check(q, k, weight_q, weight_k, across_heads)
    if _dispatch.autograd_runs_reference("qk_rms_norm", q, k, weight_q, weight_k):
        return qk_rms_norm_reference(q, k, weight_q, weight_k, eps, across_heads)
    return _qk_rms_norm_op(q, k, weight_q, weight_k, float(eps), bool(across_heads), impl)
