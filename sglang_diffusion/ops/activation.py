"""Tanh-approximate GELU, the activation of the DiTs' feed-forward (Wan, FLUX, ...):

    gelu_tanh(x) = 0.5 x (1 + tanh(u)) = x / (1 + exp(-2u)),   u = sqrt(2/pi) (x + 0.044715 x^3)

The kernels use the second form: one exp instead of a tanh, which costs ATen's CPU kernel
most of its time. Elementwise on any shape (the kernels see a flat contiguous buffer); math
is fp32, the output has x's dtype.

- ``gelu_tanh_reference``: plain torch, the spec.
- ``gelu_tanh``: picks native (csrc/cpu/activation.cpp, csrc/cuda/activation.cu), triton
  (triton_kernels/activation.py) or torch, logging the choice once; ``inplace=True`` lets it
  write the result into x (a feed-forward's hidden state is not needed after its activation:
  this saves an allocation of its size, which on the CPU also costs page faults).
- ``torch.ops.sglang_diffusion.gelu_tanh`` / ``.gelu_tanh_`` (in place): the custom ops behind
  it, with fakes, so ``torch.compile`` traces through.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from sglang_diffusion.ops import _dispatch, _native

_KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def gelu_tanh_reference(x: torch.Tensor) -> torch.Tensor:
    """``F.gelu(x, approximate="tanh")`` in fp32, returned in x's dtype."""
    return F.gelu(x.float(), approximate="tanh").to(x.dtype)


def _why_not(x: torch.Tensor) -> dict[str, Optional[str]]:
    bad = None
    if x.dtype not in _KERNEL_DTYPES:
        bad = f"x is {x.dtype}; the kernels take float32, bfloat16 or float16"
    native = bad or _dispatch.native_why_not(x.device, "gelu_tanh_out")
    triton = bad or _dispatch.triton_why_not(x.device)
    return {"native": native, "triton": triton}


def _choose(x: torch.Tensor, impl: Optional[str]) -> str:
    return _dispatch.choose("gelu_tanh", impl, _why_not(x), f"{x.device.type} {x.dtype}")


def _write(impl: str, out: torch.Tensor, x: torch.Tensor) -> None:
    """out (contiguous, x's shape and dtype; may be x) = gelu_tanh(x)."""
    x = x.contiguous()
    if impl == "triton":
        from sglang_diffusion.triton_kernels.activation import gelu_tanh_fwd

        gelu_tanh_fwd(x, out)
    else:
        _native.native_library().ops.gelu_tanh_out(out, x)


@_dispatch.custom_op("sglang_diffusion::gelu_tanh", mutates_args=())
def _gelu_tanh_op(x: torch.Tensor, impl: Optional[str]) -> torch.Tensor:
    chosen = _choose(x, impl)
    if chosen == "torch":
        return gelu_tanh_reference(x).contiguous()
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    _write(chosen, out, x)
    return out


@_gelu_tanh_op.register_fake
def _(x, impl):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@_dispatch.custom_op("sglang_diffusion::gelu_tanh_", mutates_args=("x",))
def _gelu_tanh_inplace_op(x: torch.Tensor, impl: Optional[str]) -> None:
    chosen = _choose(x, impl)
    if chosen == "torch":
        x.copy_(gelu_tanh_reference(x))
    elif x.is_contiguous():
        _write(chosen, x, x)
    else:
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        _write(chosen, out, x)
        x.copy_(out)


@_gelu_tanh_inplace_op.register_fake
def _(x, impl):
    return None


def gelu_tanh(x: torch.Tensor, impl: Optional[str] = None, inplace: bool = False) -> torch.Tensor:
    """Tanh-approximate GELU of x (any shape) in x's dtype.

    ``inplace``: the result may be written into x, so use the returned tensor, not x, after
    the call (when autograd needs the graph, the reference runs out of place and x is left as
    it was). ``impl``: None (pick), native, triton or torch.
    """
    if _dispatch.autograd_runs_reference("gelu_tanh", x):
        return gelu_tanh_reference(x)
    if inplace:
        _gelu_tanh_inplace_op(x, impl)
        return x
    return _gelu_tanh_op(x, impl)
