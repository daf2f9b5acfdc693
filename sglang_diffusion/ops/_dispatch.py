"""How an op picks its implementation: ``native`` (the ``_C`` kernels, C++ on the CPU and CUDA
when built with it), ``triton`` (sglang_diffusion.triton_kernels, CUDA only: on a CPU Triton
has only its interpreter) or ``torch`` (the op's pure-PyTorch path, which always runs).

Each op passes, per implementation, None when it can run these inputs or the reason it cannot;
``choose`` takes the first that can (or the one asked for) and logs the choice and its reason
once. Capability checks run at call time, never at import time.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from typing import Callable, Optional

import torch

from sglang_diffusion.ops import _native

logger = logging.getLogger("sglang_diffusion.ops")

IMPLS = ("native", "triton", "torch")


@functools.cache
def log_choice(op: str, impl: str, reason: str) -> None:
    """Once per op and choice, at DEBUG: a kernel choice per op is detail (`--log-level debug`)."""
    logger.debug("%s: %s (%s)", op, impl, reason)


def needs_autograd(*tensors: Optional[torch.Tensor]) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def autograd_runs_reference(op: str, *tensors: Optional[torch.Tensor]) -> bool:
    """Whether autograd needs the graph of these inputs, which the inference-only kernels do not
    build: then the op's pure-PyTorch reference runs (logged once)."""
    if not needs_autograd(*tensors):
        return False
    if not torch.compiler.is_compiling():
        log_choice(op, "torch", "autograd: an input requires grad")
    return True


def native_why_not(device: torch.device, op_name: str) -> Optional[str]:
    """None when ``_C`` has ``op_name`` for ``device``'s type, else why not."""
    native = _native.native_library()
    if not native.available:
        return f"sglang_diffusion._C is not available: {native.missing_reason}"
    if not hasattr(native.ops, op_name):
        return f"sglang_diffusion._C has no {op_name} (built from older sources: rebuild it)"
    if device.type == "cpu":
        return None
    if device.type == "cuda":
        return None if native.with_cuda else "sglang_diffusion._C was built without CUDA kernels"
    return f"inputs on {device.type}; _C has CPU and CUDA kernels only"


@functools.cache
def _triton_import_error() -> Optional[str]:
    if importlib.util.find_spec("triton") is None:
        return "the triton package is not installed"
    return None


def triton_why_not(device: torch.device) -> Optional[str]:
    """None when the Triton kernels can run on ``device``, else why not."""
    if device.type != "cuda":
        return f"inputs on {device.type}; Triton kernels run on CUDA (a CPU has only Triton's interpreter)"
    return _triton_import_error()


def choose(op: str, requested: Optional[str], why_not: dict[str, Optional[str]], detail: str) -> str:
    """The implementation to run: ``requested`` if given (a ValueError with its reason when it
    cannot run), else the first in ``why_not``'s order that can, else ``torch``.

    ``why_not`` maps native/triton to None (can run) or a reason; ``detail`` describes the inputs.
    """
    if requested is not None:
        if requested not in IMPLS:
            raise ValueError(f"{op}: unknown implementation {requested!r} (valid: {', '.join(IMPLS)})")
        reason = why_not.get(requested)
        if reason is not None:
            raise ValueError(f"{op}: implementation {requested!r} cannot run: {reason}")
        if not torch.compiler.is_compiling():
            log_choice(op, requested, f"requested, {detail}")
        return requested
    for impl, reason in why_not.items():
        if reason is None:
            if not torch.compiler.is_compiling():
                log_choice(op, impl, detail)
            return impl
    if not torch.compiler.is_compiling():
        log_choice(op, "torch", "; ".join(f"not {k}: {v}" for k, v in why_not.items()) or detail)
    return "torch"


class CustomOp:
    """A `torch.library` custom op that an eager call bypasses: torch.compile (and export)
    trace the registered op through its fake implementation, while an eager call runs the
    Python function itself. The dispatcher's way into a Python custom op imports torch._dynamo
    (with sympy and inductor's config) on its first call, a second or more of CPU that a
    request run eagerly never needs."""

    def __init__(self, fn, op):
        self._fn, self.op = fn, op
        functools.update_wrapper(self, fn)

    def __call__(self, *args, **kwargs):
        if torch.compiler.is_compiling():
            return self.op(*args, **kwargs)
        return self._fn(*args, **kwargs)

    def register_fake(self, fn):
        return self.op.register_fake(fn)


def custom_op(name: str, *, mutates_args) -> Callable[[Callable], CustomOp]:
    """`torch.library.custom_op(name, mutates_args=...)` as a `CustomOp`."""
    def wrap(fn) -> CustomOp:
        return CustomOp(fn, torch.library.custom_op(name, mutates_args=mutates_args)(fn))

    return wrap
