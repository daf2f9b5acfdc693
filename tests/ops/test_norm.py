"""sglang_diffusion.ops.norm: the _C kernel against the reference, the dispatcher, the fallback
when _C is missing, and torch.compile through the custom ops.

Tolerances: fp32 1e-5; bf16/fp16 by flash-attention's rule, the kernel's max error against an
fp32 reference at most twice that of plain torch in the same dtype.
"""

import logging
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from sglang_diffusion.ops import _native
from sglang_diffusion.ops.norm import (
    gated_residual_norm_modulate,
    gated_residual_norm_modulate_reference,
    norm_modulate,
    norm_modulate_reference,
)
from tests.ops.helpers import max_err, native_ops, poisoned_like, requires_native

EPS = 1e-6
SHAPES = [(1, 1, 5), (2, 7, 5), (2, 3, 16), (2, 7, 123), (1, 33, 1536), (3, 5, 47)]
MOD_FORMS = ["D", "B1D", "BSD"]


def _rand(shape, gen, scale=1.0, offset=0.0):
    return torch.randn(shape, generator=gen) * scale + offset


def modulation(form, shape, gen, scale=1.0, offset=0.0):
    b, s, d = shape
    sizes = {"D": (d,), "B1D": (b, 1, d), "BSD": (b, s, d)}[form]
    return _rand(sizes, gen, scale, offset)


def make_inputs(shape, mod_form="B1D", affine=True, seed=0):
    """Fresh random fp32 inputs, never zeros; x has an offset so the mean matters."""
    gen = torch.Generator().manual_seed(seed)
    d = shape[-1]
    return {
        "x": _rand(shape, gen, 2.0, 0.5),  # [B, S, D]
        "scale": modulation(mod_form, shape, gen, 0.5),
        "shift": modulation(mod_form, shape, gen),
        "weight": _rand((d,), gen, 0.2, 1.0) if affine else None,
        "bias": _rand((d,), gen, 0.2) if affine else None,
    }


def make_gated_inputs(shape, mod_form="B1D", affine=True, seed=0):
    gen = torch.Generator().manual_seed(seed + 1)
    inputs = make_inputs(shape, mod_form, affine, seed)
    inputs["residual"] = _rand(shape, gen, 3.0, -0.5)  # [B, S, D]
    inputs["gate"] = modulation(mod_form, shape, gen, 0.5, 1.0)
    return inputs


def cast(inputs, dtype, mod_dtype=None):
    mod_dtype = mod_dtype or dtype
    mod_names = ("scale", "shift", "gate")
    return {
        k: None if v is None else v.to(mod_dtype if k in mod_names else dtype) for k, v in inputs.items()
    }


def upcast(inputs):
    return {k: None if v is None else v.float() for k, v in inputs.items()}


def plain_torch(norm_type, x, scale, shift, weight, bias):
    """The unfused composition in the inputs' own dtype: the baseline of the tolerance rule."""
    d = x.shape[-1]
    if norm_type == "layer":
        y = F.layer_norm(x, (d,), weight, bias, EPS)
    else:
        y = F.rms_norm(x, (d,), weight, EPS)
        y = y if bias is None else y + bias
    return y * (1 + scale) + shift


def native_norm_modulate(i, norm_type):
    out = poisoned_like(i["x"])  # every element must be written
    native_ops().norm_modulate_out(
        out, i["x"], i["scale"], i["shift"], i["weight"], i["bias"], EPS, norm_type
    )
    return out


def native_gated(i, norm_type):
    new_residual, out = poisoned_like(i["residual"]), poisoned_like(i["residual"])
    native_ops().gated_residual_norm_modulate_out(
        new_residual, out, i["residual"], i["x"], i["gate"], i["scale"], i["shift"], i["weight"],
        i["bias"], EPS, norm_type,
    )
    return new_residual, out


# ---- the _C kernel against the reference ----------------------------------------------------


@requires_native
@pytest.mark.parametrize("norm_type", ["layer", "rms"])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("mod_form", MOD_FORMS)
@pytest.mark.parametrize("shape", SHAPES)
def test_native_norm_modulate_matches_reference_fp32(shape, mod_form, affine, norm_type):
    i = make_inputs(shape, mod_form, affine)
    out = native_norm_modulate(i, norm_type)
    assert not out.isnan().any()
    expected = norm_modulate_reference(**i, eps=EPS, norm_type=norm_type)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@requires_native
@pytest.mark.parametrize("norm_type", ["layer", "rms"])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("gated", [True, False])
@pytest.mark.parametrize("mod_form", MOD_FORMS)
@pytest.mark.parametrize("shape", SHAPES)
def test_native_gated_residual_matches_reference_fp32(shape, mod_form, gated, affine, norm_type):
    i = make_gated_inputs(shape, mod_form, affine)
    if not gated:
        i["gate"] = None
    new_residual, out = native_gated(i, norm_type)
    assert not new_residual.isnan().any() and not out.isnan().any()
    expected_residual, expected = gated_residual_norm_modulate_reference(**i, eps=EPS, norm_type=norm_type)
    torch.testing.assert_close(new_residual, expected_residual, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@requires_native
@pytest.mark.parametrize("norm_type", ["layer", "rms"])
@pytest.mark.parametrize("mod_dtype", ["same", "float32"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(2, 7, 5), (2, 7, 123), (1, 33, 1536), (3, 5, 47)])
def test_native_norm_modulate_low_precision_within_twice_torch_error(shape, dtype, mod_dtype, norm_type):
    i = cast(make_inputs(shape, "B1D", affine=True), dtype, None if mod_dtype == "same" else torch.float32)
    out = native_norm_modulate(i, norm_type)
    assert out.dtype == dtype and not out.isnan().any()
    expected = norm_modulate_reference(**upcast(i), eps=EPS, norm_type=norm_type)  # fp32
    baseline = plain_torch(norm_type, **cast(i, dtype))
    assert max_err(out, expected) <= 2 * max_err(baseline, expected)


@requires_native
@pytest.mark.parametrize("norm_type", ["layer", "rms"])
@pytest.mark.parametrize("mod_dtype", ["same", "float32"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(2, 7, 5), (2, 7, 123), (1, 33, 1536)])
def test_native_gated_residual_low_precision_within_twice_torch_error(shape, dtype, mod_dtype, norm_type):
    i = cast(make_gated_inputs(shape, "BSD"), dtype, None if mod_dtype == "same" else torch.float32)
    new_residual, out = native_gated(i, norm_type)
    assert not new_residual.isnan().any() and not out.isnan().any()
    expected_residual, expected = gated_residual_norm_modulate_reference(**upcast(i), eps=EPS, norm_type=norm_type)
    lp = cast(i, dtype)
    baseline_residual = lp["residual"] + lp["gate"] * lp["x"]
    baseline = plain_torch(norm_type, baseline_residual, lp["scale"], lp["shift"], lp["weight"], lp["bias"])
    assert max_err(new_residual, expected_residual) <= 2 * max_err(baseline_residual, expected_residual)
    assert max_err(out, expected) <= 2 * max_err(baseline, expected)


@requires_native
def test_native_reads_strided_modulation_views():
    """Wan's `(table + temb).chunk(6, dim=1)` gives [B, 1, D] views with batch stride 6 * D."""
    i = make_inputs((2, 9, 123))
    gen = torch.Generator().manual_seed(3)
    table = _rand((2, 6, 123), gen)
    i["shift"], i["scale"] = table[:, 0:1], table[:, 1:2]  # [B, 1, D], not contiguous
    assert not i["scale"].is_contiguous()
    torch.testing.assert_close(native_norm_modulate(i, "layer"), norm_modulate_reference(**i, eps=EPS))


@requires_native
def test_native_handles_empty_sequence():
    i = make_inputs((2, 0, 16))
    assert native_norm_modulate(i, "layer").shape == (2, 0, 16)


@requires_native
def test_native_portable_build_matches_reference():
    """ATEN_CPU_CAPABILITY=default makes torch, and so _C, run the build without AVX2."""
    script = textwrap.dedent(
        """
        import torch
        import sglang_diffusion._C
        from sglang_diffusion.ops.norm import norm_modulate_reference, gated_residual_norm_modulate_reference
        ops = torch.ops.sglang_diffusion_C
        assert ops.cpu_isa() == "default", ops.cpu_isa()
        g = torch.Generator().manual_seed(0)
        for dtype in (torch.float32, torch.bfloat16):
            for d in (5, 123, 1536):
                x = (torch.randn(2, 7, d, generator=g) + 0.5).to(dtype)
                res = torch.randn(2, 7, d, generator=g).to(dtype)
                sc, sh, gate = (torch.randn(2, 1, d, generator=g) for _ in range(3))
                w, b = torch.randn(d, generator=g), torch.randn(d, generator=g)
                out = torch.full_like(x, float("nan"))
                ops.norm_modulate_out(out, x, sc, sh, w, b, 1e-6, "rms")
                ref = norm_modulate_reference(x, sc, sh, w, b, 1e-6, "rms")
                tol = 1e-5 if dtype == torch.float32 else 1e-2
                torch.testing.assert_close(out.float(), ref.float(), atol=tol, rtol=tol)
                r_out, out = torch.full_like(x, float("nan")), torch.full_like(x, float("nan"))
                ops.gated_residual_norm_modulate_out(r_out, out, res, x, gate, sc, sh, w, b, 1e-6, "layer")
                r_ref, ref = gated_residual_norm_modulate_reference(res, x, gate, sc, sh, w, b, 1e-6, "layer")
                torch.testing.assert_close(r_out.float(), r_ref.float(), atol=tol, rtol=tol)
                torch.testing.assert_close(out.float(), ref.float(), atol=tol, rtol=tol)
        """
    )
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "default"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr


# ---- the checks in csrc/bindings.cpp -------------------------------------------------------


@requires_native
@pytest.mark.parametrize(
    "change, message",
    [
        (lambda i: i.update(x=i["x"].transpose(0, 1)), "x must be contiguous"),
        (lambda i: i.update(x=i["x"][0]), "x must be 3-D"),
        (lambda i: i.update(x=i["x"].double()), "x must be float32, bfloat16 or float16"),
        (lambda i: i.update(scale=i["scale"][..., :-1]), "scale's last dim must be D"),
        (lambda i: i.update(shift=torch.randn(3, 1, 16)), "does not broadcast"),
        (lambda i: i.update(scale=i["scale"].half()), "scale must have x's dtype"),
        (lambda i: i.update(shift=i["shift"].half()), "shift must have scale's dtype"),
        (lambda i: i.update(weight=i["weight"][:-1]), "weight must be [D]"),
    ],
)
def test_native_rejects_bad_input_with_its_message(change, message):
    i = make_inputs((2, 3, 16))
    change(i)
    with pytest.raises(RuntimeError, match=message.replace("[", r"\[").replace("]", r"\]")):
        native_ops().norm_modulate_out(
            torch.empty(2, 3, 16), i["x"], i["scale"], i["shift"], i["weight"], i["bias"], EPS, "layer"
        )


@requires_native
def test_native_rejects_unknown_norm_type():
    i = make_inputs((2, 3, 16))
    with pytest.raises(RuntimeError, match="norm_type must be 'layer' or 'rms'"):
        native_norm_modulate(i, "group")


# ---- the dispatcher ------------------------------------------------------------------------


@requires_native
def test_dispatcher_runs_native_on_cpu_and_logs_it_once(caplog, fresh_choice_log):
    i = make_inputs((2, 7, 123))
    with caplog.at_level(logging.DEBUG, logger="sglang_diffusion.ops"):
        out = norm_modulate(**i, eps=EPS)
        norm_modulate(**i, eps=EPS)
    torch.testing.assert_close(out, norm_modulate_reference(**i, eps=EPS), atol=1e-5, rtol=1e-5)
    choices = [r.getMessage() for r in caplog.records if r.getMessage().startswith("norm_modulate: ")]
    assert choices == ["norm_modulate: native (cpu torch.float32)"], choices


def test_dispatcher_runs_the_reference_when_asked():
    i = make_inputs((2, 7, 123))
    assert torch.equal(norm_modulate(**i, eps=EPS, impl="torch"), norm_modulate_reference(**i, eps=EPS))


def test_dispatcher_refuses_an_explicit_native_it_cannot_run_with_the_reason():
    i = {k: v.double() for k, v in make_inputs((2, 3, 16)).items()}
    with pytest.raises(ValueError, match="'native' cannot run: .*float64"):
        norm_modulate(**i, impl="native")


@requires_native
def test_dispatcher_gated_accepts_noncontiguous_activations():
    i = make_gated_inputs((3, 5, 47))
    i["x"] = i["x"].transpose(0, 1).contiguous().transpose(0, 1)  # same values, other strides
    got = gated_residual_norm_modulate(**i, eps=EPS, norm_type="rms")
    expected = gated_residual_norm_modulate_reference(**i, eps=EPS, norm_type="rms")
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_dispatcher_falls_back_to_reference_for_float64_with_reason(caplog, fresh_choice_log):
    i = {k: v.double() for k, v in make_inputs((2, 3, 16)).items()}
    with caplog.at_level(logging.DEBUG, logger="sglang_diffusion.ops"):
        out = norm_modulate(**i, eps=EPS)
    assert torch.equal(out, norm_modulate_reference(**i, eps=EPS))
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("norm_modulate: torch") and "float64" in m for m in messages), messages


def test_dispatcher_falls_back_when_native_is_unavailable(monkeypatch, caplog, fresh_choice_log):
    missing = _native.NativeLibrary(ops=None, missing_reason="disabled by the test")
    monkeypatch.setattr(_native, "native_library", lambda: missing)
    i = make_gated_inputs((2, 7, 123))
    with caplog.at_level(logging.DEBUG, logger="sglang_diffusion.ops"):
        out = norm_modulate(i["x"], i["scale"], i["shift"], i["weight"], i["bias"], EPS, "rms")
        gated = gated_residual_norm_modulate(**i, eps=EPS)
    assert torch.equal(out, norm_modulate_reference(i["x"], i["scale"], i["shift"], i["weight"], i["bias"], EPS, "rms"))
    for a, b in zip(gated, gated_residual_norm_modulate_reference(**i, eps=EPS)):
        assert torch.equal(a, b)
    assert any("disabled by the test" in r.getMessage() for r in caplog.records)


def test_missing_extension_is_logged_once_as_a_warning(monkeypatch, caplog):
    real_import = _native.importlib.import_module

    def no_extension(name, *args):
        if name == "sglang_diffusion._C":
            raise ImportError("No module named 'sglang_diffusion._C'")
        return real_import(name, *args)

    monkeypatch.setattr(_native.importlib, "import_module", no_extension)
    _native.native_library.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="sglang_diffusion.ops._native"):
            library = _native.native_library()
            _native.native_library()
    finally:
        _native.native_library.cache_clear()
    assert not library.available and "No module named" in library.missing_reason
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "sglang_diffusion._C not built: running on pure-PyTorch paths" in warnings[0].getMessage()


def test_dispatcher_uses_reference_when_autograd_needs_the_graph():
    i = make_inputs((2, 3, 16))
    i["x"].requires_grad_(True)
    norm_modulate(**i, eps=EPS).sum().backward()
    assert i["x"].grad is not None and i["x"].grad.shape == i["x"].shape


def test_dispatcher_rejects_modulation_that_does_not_broadcast():
    i = make_inputs((2, 3, 16))
    i["scale"] = torch.randn(4, 1, 16)
    with pytest.raises(ValueError, match="does not broadcast"):
        norm_modulate(**i)


def test_dispatcher_rejects_unknown_norm_type():
    with pytest.raises(ValueError, match="norm_type"):
        norm_modulate(**make_inputs((1, 2, 8)), norm_type="group")


# ---- torch.library registration and torch.compile ------------------------------------------


def test_custom_ops_pass_opcheck():
    i = make_gated_inputs((2, 5, 24))
    torch.library.opcheck(
        torch.ops.sglang_diffusion.norm_modulate.default,
        (i["x"], i["scale"], i["shift"], i["weight"], i["bias"], EPS, "layer", None),
    )
    torch.library.opcheck(
        torch.ops.sglang_diffusion.gated_residual_norm_modulate.default,
        (i["residual"], i["x"], i["gate"], i["scale"], i["shift"], None, None, EPS, "rms", None),
    )


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compiled_block_traces_through_the_ops_in_one_graph(backend):
    def block(residual, x, gate, scale, shift):
        residual, h = gated_residual_norm_modulate(residual, x, gate, scale, shift, eps=EPS)
        return residual, norm_modulate(h * 2.0, scale, shift, eps=EPS, norm_type="rms")

    i = make_gated_inputs((2, 7, 32))
    args = (i["residual"], i["x"], i["gate"], i["scale"], i["shift"])
    torch._dynamo.reset()
    compiled = torch.compile(block, fullgraph=True, backend=backend)
    for got, expected in zip(compiled(*args), block(*args)):
        torch.testing.assert_close(got, expected)
