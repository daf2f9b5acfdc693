"""Every CPU build of the _C kernels (csrc/cpu/isa.h: default, avx2, avx512) against the
references, in fp32 and bf16, and which build runs.

SGLD_CPU_ISA forces a build per call, so each is tested in this process; a build this CPU does
not report the instructions of is skipped with that reason (the AVX-512 one on an AVX2-only
CPU: it is compiled here, but can only run where the CPU has AVX-512 F/BW/VL/DQ).

Tolerances: fp32 1e-5 (attention, norms, RoPE) and 1e-6 (GELU); bf16: 2e-2 absolute and
relative on outputs rounded to bf16 (one bf16 ulp at the values' scale, 2^-7), the attention
lse 1e-4 (fp32 math on the same inputs).
"""

from pathlib import Path

import pytest
import torch

from sglang_diffusion.ops import _native
from sglang_diffusion.ops.activation import gelu_tanh, gelu_tanh_reference
from sglang_diffusion.ops.attention import attention, attention_reference
from sglang_diffusion.ops.norm import (
    gated_residual_norm_modulate,
    gated_residual_norm_modulate_reference,
    norm_modulate,
    norm_modulate_reference,
)
from sglang_diffusion.ops.qk_norm import qk_rms_norm, qk_rms_norm_reference
from sglang_diffusion.ops.rope import apply_rope, apply_rope_reference, rope_cos_sin_1d
from tests.ops.helpers import randn, requires_native

pytestmark = requires_native

ISAS = ("default", "avx2", "avx512")
DTYPES = [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)]


def _cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


@pytest.fixture(params=ISAS)
def isa(request, monkeypatch):
    """Forces one build for the test (SGLD_CPU_ISA), or skips it with the reason."""
    native = _native.native_library()
    if request.param not in native.cpu_isas:
        pytest.skip(f"this CPU does not report the instructions of the {request.param} build "
                    f"(it runs {', '.join(native.cpu_isas)})")
    monkeypatch.setenv("SGLD_CPU_ISA", request.param)
    assert native.cpu_isa == request.param
    return request.param


def assert_close(got, expected, tol):
    assert not got.isnan().any()
    torch.testing.assert_close(got.float(), expected.float(), atol=tol, rtol=tol)


def test_auto_runs_the_widest_build_this_cpu_and_torch_allow(monkeypatch):
    monkeypatch.delenv("SGLD_CPU_ISA", raising=False)
    flags = _cpu_flags()
    if not flags:
        pytest.skip("no /proc/cpuinfo flags to compare with")
    has_avx512 = {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags
    has_avx2 = {"avx2", "fma", "f16c"} <= flags
    torch_isa = torch.backends.cpu.get_cpu_capability()
    if has_avx512 and torch_isa == "AVX512":
        expected = "avx512"
    elif has_avx2 and torch_isa in ("AVX2", "AVX512"):
        expected = "avx2"
    else:
        expected = "default"
    native = _native.native_library()
    assert native.cpu_isa == expected
    assert ("avx512" in native.cpu_isas) == has_avx512  # never offered without the instructions


def test_forcing_a_build_this_cpu_lacks_is_an_error(monkeypatch):
    missing = [isa for isa in ISAS if isa not in _native.native_library().cpu_isas]
    if not missing:
        pytest.skip("this CPU runs every build")
    monkeypatch.setenv("SGLD_CPU_ISA", missing[-1])
    with pytest.raises(RuntimeError, match=f"SGLD_CPU_ISA={missing[-1]}: this CPU"):
        _native.native_library().cpu_isa


def test_an_unknown_build_name_is_an_error(monkeypatch):
    monkeypatch.setenv("SGLD_CPU_ISA", "sse9")
    with pytest.raises(RuntimeError, match="SGLD_CPU_ISA must be auto, default, avx2 or avx512"):
        _native.native_library().cpu_isa


@pytest.mark.parametrize("dtype, tol", DTYPES)
def test_norm_modulate(isa, dtype, tol):
    for d in (5, 123, 1536):  # a scalar row, vectors plus a tail, vectors only
        x, res = randn((2, 7, d), 0, offset=0.5, dtype=dtype), randn((2, 7, d), 1, dtype=dtype)
        scale, shift, gate = (randn((2, 1, d), seed) for seed in (2, 3, 4))
        w, b = randn(d, 5), randn(d, 6)
        for norm_type in ("layer", "rms"):
            got = norm_modulate(x, scale, shift, w, b, 1e-6, norm_type, impl="native")
            assert_close(got, norm_modulate_reference(x, scale, shift, w, b, 1e-6, norm_type), tol)
        got = gated_residual_norm_modulate(res, x, gate, scale, shift, w, b, 1e-6, "layer", impl="native")
        expected = gated_residual_norm_modulate_reference(res, x, gate, scale, shift, w, b, 1e-6, "layer")
        for a, e in zip(got, expected):
            assert_close(a, e, tol)


@pytest.mark.parametrize("dtype, tol", DTYPES)
def test_qk_rms_norm(isa, dtype, tol):
    q, k = randn((2, 9, 3, 40), 0, dtype=dtype), randn((2, 5, 3, 40), 1, dtype=dtype)
    for across_heads, width in ((True, 120), (False, 40)):
        w = randn(width, 2)
        got = qk_rms_norm(q, k, w, w, 1e-6, across_heads, impl="native")
        for a, e in zip(got, qk_rms_norm_reference(q, k, w, w, 1e-6, across_heads)):
            assert_close(a, e, tol)


@pytest.mark.parametrize("dtype, tol", DTYPES)
def test_rope(isa, dtype, tol):
    q, k = randn((2, 11, 3, 72), 0, dtype=dtype), randn((2, 11, 2, 72), 1, dtype=dtype)
    cos, sin = rope_cos_sin_1d(torch.arange(11) * 7 + 3, 72)  # [S, D/2]
    for interleaved in (True, False):
        got = apply_rope(q, k, cos, sin, interleaved, impl="native")
        for a, e in zip(got, apply_rope_reference(q, k, cos, sin, interleaved)):
            assert_close(a, e, tol)


@pytest.mark.parametrize("dtype, tol", DTYPES)
def test_attention(isa, dtype, tol):
    # 150 queries: a full block of 128 and a padded one; 300 keys: two key blocks and a tail.
    q = randn((2, 150, 2, 64), 0, dtype=dtype)
    k, v = randn((2, 300, 2, 64), 1, dtype=dtype), randn((2, 300, 2, 64), 2, dtype=dtype)
    out, lse = attention(q, k, v, backend="native")
    assert out.dtype == dtype
    expected, expected_lse = attention_reference(q.float(), k.float(), v.float())
    assert_close(out, expected, tol)
    torch.testing.assert_close(lse, expected_lse, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.bfloat16, 2e-2)])
def test_gelu_tanh(isa, dtype, tol):
    x = torch.cat([torch.linspace(-30, 30, 4001), torch.tensor([-1e4, 1e4] * 9)]).to(dtype)
    assert_close(gelu_tanh(x, impl="native"), gelu_tanh_reference(x), tol)
