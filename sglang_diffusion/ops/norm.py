"""Norm fused with adaLN modulation, as DiT blocks (Wan, FLUX, HunyuanVideo, ...) use it.

    norm_modulate:                 out = norm(x) * (1 + scale) + shift
    gated_residual_norm_modulate:  residual = residual + gate * x
                                   out = norm(residual) * (1 + scale) + shift

norm is LayerNorm (biased variance) or RMSNorm over the last dim, times ``weight`` plus
``bias`` when given. Math is fp32; outputs have the activation's dtype. The new residual is
rounded to its dtype before it is normalised, as the unfused
``residual = (residual.float() + gate * x).type_as(residual)`` of diffusers' Wan block does.

Shapes: x, residual [B, S, D]; scale, shift, gate [D], [B, 1, D] or [B, S, D] (anything that
broadcasts to x); weight, bias [D].

- ``*_reference``: plain torch, the spec; tests and benchmarks import these.
- ``norm_modulate`` / ``gated_residual_norm_modulate``: what models call. They pick triton
  (triton_kernels/norm.py: CUDA tensors, Triton installed), native (the ``_C`` kernel,
  csrc/cpu/norm.cpp, or csrc/cuda/norm.cu when _C is built with CUDA; fp32/bf16/fp16) or torch
  (the reference) through ops._dispatch, logging the choice and its reason once; ``impl`` asks for
  one. The fused kernel is inference-only: when autograd needs the graph, the reference runs.
- ``torch.ops.sglang_diffusion.norm_modulate`` / ``.gated_residual_norm_modulate``: the
  ``torch.library`` custom ops behind them, with fake implementations, so ``torch.compile``
  traces through.
"""

from typing import Optional

import torch
import torch.nn.functional as F

from sglang_diffusion.ops import _dispatch, _native

NORM_TYPES = ("layer", "rms")
_KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _check_norm_type(norm_type: str) -> None:
    if norm_type not in NORM_TYPES:
        raise ValueError(f"norm_type must be one of {NORM_TYPES}, got {norm_type!r}")


def _f32(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.float()


def norm_modulate_reference(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
                            weight: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None,
                            eps: float = 1e-6, norm_type: str = "layer") -> torch.Tensor:
    """``norm(x) * (1 + scale) + shift`` in fp32, returned in x's dtype."""
    _check_norm_type(norm_type)
    x32 = x.float()
    dim = (x.shape[-1],)
    if norm_type == "layer":
        y = F.layer_norm(x32, dim, _f32(weight), _f32(bias), eps)  # [B, S, D]
    else:
        y = F.rms_norm(x32, dim, _f32(weight), eps)
        if bias is not None:
            y = y + bias.float()
    return (y * (1 + scale.float()) + shift.float()).to(x.dtype)


def gated_residual_norm_modulate_reference(residual: torch.Tensor, x: torch.Tensor,
                                           gate: Optional[torch.Tensor], scale: torch.Tensor,
                                           shift: torch.Tensor, weight: Optional[torch.Tensor] = None,
                                           bias: Optional[torch.Tensor] = None, eps: float = 1e-6,
                                           norm_type: str = "layer") -> tuple[torch.Tensor, torch.Tensor]:
    """``(residual + gate * x, norm_modulate(that))``; gate None means 1."""
    branch = x.float() if gate is None else gate.float() * x.float()
    new_residual = (residual.float() + branch).to(residual.dtype)  # [B, S, D], as stored
    out = norm_modulate_reference(new_residual, scale, shift, weight, bias, eps, norm_type)
    return new_residual, out


# ---- dispatch ------------------------------------------------------------------------------


def _check_shapes(target: torch.Tensor, **others: Optional[torch.Tensor]) -> None:
    """The ops' outputs have the activation's shape: every other input must broadcast to it."""
    for name, t in others.items():
        if t is None:
            continue
        # by hand: torch.broadcast_shapes imports sympy (seconds of start-up) on its first call
        shape, full = tuple(t.shape), tuple(target.shape)
        broadcasts = len(shape) <= len(full) and all(d in (1, f) for d, f in zip(shape[::-1], full[::-1]))
        if not broadcasts:
            raise ValueError(
                f"{name} of shape {tuple(t.shape)} does not broadcast to shape {tuple(target.shape)}"
            )


def _why_not_native(op_name: str, x: torch.Tensor, modulation: tuple[Optional[torch.Tensor], ...],
                    affine: tuple[Optional[torch.Tensor], ...]) -> Optional[str]:
    """None when the _C kernel ``op_name`` can run these inputs, else the reason it cannot."""
    why_not = _dispatch.native_why_not(x.device, op_name)
    if why_not is not None:
        return why_not
    if any(t is not None and t.device != x.device for t in (modulation + affine)):
        return f"inputs on more than one device; the _C kernel takes them all on x's ({x.device})"
    if x.dtype not in _KERNEL_DTYPES:
        return f"x is {x.dtype}; the _C kernel takes float32, bfloat16 or float16"
    if x.dim() != 3 or x.shape[-1] == 0:
        return f"x has shape {tuple(x.shape)}; the _C kernel takes [B, S, D] with D > 0"
    mods = [t for t in modulation if t is not None]
    mod_dtypes = {t.dtype for t in mods}
    if len(mod_dtypes) != 1 or not mod_dtypes <= {x.dtype, torch.float32}:
        names = sorted(str(d) for d in mod_dtypes)
        return f"modulation dtypes {names}; the _C kernel takes one, x's ({x.dtype}) or float32"
    if any(t.shape[-1] != x.shape[-1] or (t.shape[-1] > 1 and t.stride(-1) != 1) for t in mods):
        return "a modulation tensor is not [..., D] with a contiguous last dim"
    if any(t is not None and (t.dim() != 1 or not t.is_floating_point()) for t in affine):
        return "weight or bias is not a 1-D float tensor"
    return None


def _why_not_triton(x: torch.Tensor, modulation: tuple[Optional[torch.Tensor], ...]) -> Optional[str]:
    """None when triton_kernels/norm.py can run these inputs (CUDA, Triton installed)."""
    why_not = _dispatch.triton_why_not(x.device)
    if why_not is None and (x.dtype not in _KERNEL_DTYPES or x.dim() != 3):
        why_not = f"x is {x.dtype} of shape {tuple(x.shape)}; the Triton kernel takes [B, S, D] fp32/bf16/fp16"
    if why_not is None and any(t is not None and t.shape[-1] > 1 and t.stride(-1) != 1 for t in modulation):
        why_not = "a modulation tensor has a strided last dim"
    return why_not


@_dispatch.custom_op("sglang_diffusion::norm_modulate", mutates_args=())
def _norm_modulate_op(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
                      weight: Optional[torch.Tensor], bias: Optional[torch.Tensor], eps: float,
                      norm_type: str, impl: Optional[str]) -> torch.Tensor:
    _check_shapes(x, scale=scale, shift=shift)
    why_not = {"triton": _why_not_triton(x, (scale, shift)),
               "native": _why_not_native("norm_modulate_out", x, (scale, shift), (weight, bias))}
    chosen = _dispatch.choose("norm_modulate", impl, why_not, f"{x.device.type} {x.dtype}")
    if chosen == "torch":
        return norm_modulate_reference(x, scale, shift, weight, bias, eps, norm_type).contiguous()
    if chosen == "triton":
        from sglang_diffusion.triton_kernels.norm import norm_modulate_fwd

        return norm_modulate_fwd(x, scale, shift, weight, bias, eps, norm_type)
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    _native.native_library().ops.norm_modulate_out(
        out, x.contiguous(), scale, shift, weight, bias, eps, norm_type
    )
    return out


@_norm_modulate_op.register_fake
def _(x, scale, shift, weight, bias, eps, norm_type, impl):
    _check_shapes(x, scale=scale, shift=shift)
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@_dispatch.custom_op("sglang_diffusion::gated_residual_norm_modulate", mutates_args=())
def _gated_residual_norm_modulate_op(residual: torch.Tensor, x: torch.Tensor, gate: Optional[torch.Tensor],
                                     scale: torch.Tensor, shift: torch.Tensor, weight: Optional[torch.Tensor],
                                     bias: Optional[torch.Tensor], eps: float, norm_type: str,
                                     impl: Optional[str]) -> tuple[torch.Tensor, torch.Tensor]:
    _check_shapes(residual, x=x, gate=gate, scale=scale, shift=shift)
    native = _why_not_native("gated_residual_norm_modulate_out", residual, (gate, scale, shift), (weight, bias))
    if native is None and (x.shape != residual.shape or x.dtype != residual.dtype or x.device != residual.device):
        native = "x differs from residual in shape, dtype or device"
    triton = _why_not_triton(residual, (gate, scale, shift))
    if triton is None and (x.shape != residual.shape or x.dtype != residual.dtype):
        triton = "x differs from residual in shape or dtype"
    detail = f"{residual.device.type} {residual.dtype}"
    chosen = _dispatch.choose("gated_residual_norm_modulate", impl, {"triton": triton, "native": native}, detail)
    if chosen == "torch":
        new_residual, out = gated_residual_norm_modulate_reference(
            residual, x, gate, scale, shift, weight, bias, eps, norm_type
        )
        return new_residual.contiguous(), out.contiguous()
    if chosen == "triton":
        from sglang_diffusion.triton_kernels.norm import norm_modulate_fwd

        return norm_modulate_fwd(x, scale, shift, weight, bias, eps, norm_type, residual=residual, gate=gate,
                                 gated=True)
    new_residual = torch.empty_like(residual, memory_format=torch.contiguous_format)
    out = torch.empty_like(residual, memory_format=torch.contiguous_format)
    _native.native_library().ops.gated_residual_norm_modulate_out(
        new_residual, out, residual.contiguous(), x.contiguous(), gate, scale, shift, weight, bias,
        eps, norm_type,
    )
    return new_residual, out


@_gated_residual_norm_modulate_op.register_fake
def _(residual, x, gate, scale, shift, weight, bias, eps, norm_type, impl):
    _check_shapes(residual, x=x, gate=gate, scale=scale, shift=shift)
    new_residual = torch.empty_like(residual, memory_format=torch.contiguous_format)
    return new_residual, torch.empty_like(new_residual)


# ---- what models call ----------------------------------------------------------------------


def norm_modulate(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
                  weight: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None,
                  eps: float = 1e-6, norm_type: str = "layer", impl: Optional[str] = None) -> torch.Tensor:
    """``norm(x) * (1 + scale) + shift``: x [B, S, D] -> [B, S, D] in x's dtype.
    ``impl``: None (pick), native or torch."""
    _check_norm_type(norm_type)
    if _dispatch.autograd_runs_reference("norm_modulate", x, scale, shift, weight, bias):
        return norm_modulate_reference(x, scale, shift, weight, bias, eps, norm_type)
    return _norm_modulate_op(x, scale, shift, weight, bias, float(eps), norm_type, impl)


def gated_residual_norm_modulate(residual: torch.Tensor, x: torch.Tensor, gate: Optional[torch.Tensor],
                                 scale: torch.Tensor, shift: torch.Tensor,
                                 weight: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None,
                                 eps: float = 1e-6, norm_type: str = "layer",
                                 impl: Optional[str] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``residual + gate * x`` and its ``norm(.) * (1 + scale) + shift``, both [B, S, D] in
    residual's dtype; gate None means 1. ``impl``: None (pick), native or torch."""
    _check_norm_type(norm_type)
    if _dispatch.autograd_runs_reference("gated_residual_norm_modulate", residual, x, gate, scale, shift, weight,
                                         bias):
        return gated_residual_norm_modulate_reference(
            residual, x, gate, scale, shift, weight, bias, eps, norm_type
        )
    return _gated_residual_norm_modulate_op(
        residual, x, gate, scale, shift, weight, bias, float(eps), norm_type, impl
    )
