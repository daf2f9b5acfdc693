"""What the kernel tests share: the native-library skip mark, seeded inputs and the error
measures of the tolerance rule (flash-attention's: a kernel's max error against an fp32
reference is at most twice plain torch's in the same dtype)."""

import pytest
import torch

from sglang_diffusion.ops import _native

requires_native = pytest.mark.skipif(
    not _native.native_library().available,
    reason=f"sglang_diffusion._C is not built: {_native.native_library().missing_reason}",
)


def randn(shape, seed, scale=1.0, offset=0.0, dtype=torch.float32):
    """Fresh random values, never zeros."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen) * scale + offset).to(dtype)


def poisoned_like(t):
    """NaN everywhere: a kernel that leaves an element unwritten fails the NaN check."""
    return torch.full_like(t, float("nan"))


def max_err(a, b):
    return (a.float() - b.float()).abs().max().item()


def native_ops():
    return _native.native_library().ops


def attention_in_dtype(q, k, v, scale=None):
    """Plain torch attention in the inputs' own dtype (scores, softmax and P.V each rounded to
    it): the baseline of the tolerance rule, as flash-attention's tests use it."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, S, D]
    p = torch.softmax((qh @ kh.transpose(-1, -2)) * scale, dim=-1)  # [B, H, Sq, Sk]
    return (p @ vh).transpose(1, 2)  # [B, Sq, H, D]
