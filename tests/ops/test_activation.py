"""sglang_diffusion.ops.activation: the _C kernel (AVX2 and portable builds) against the
reference, the reference against the tanh formula, the dispatcher (in place too), autograd and
torch.compile; on a GPU, every implementation there.

Tolerances: fp32 1e-6 abs and rel (the kernel's exp_u20 keeps it about as close to the exact
value as F.gelu's own fp32 result); bf16/fp16 by flash-attention's rule: at most twice the error of
F.gelu in that dtype against the fp32 reference.
"""

import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from sglang_diffusion.ops import _dispatch, _native
from sglang_diffusion.ops.activation import gelu_tanh, gelu_tanh_reference
from tests.ops.helpers import max_err, native_ops, poisoned_like, randn, requires_native

# Odd sizes, a vector step plus a tail, and more than one thread's chunk (32K values).
SHAPES = [(1,), (7,), (5, 123), (3, 17, 33), (3, 40001)]
LOW = [torch.bfloat16, torch.float16]


def wide_randn(shape, seed, dtype=torch.float32):
    """Values over about [-15, 15]: GELU's curved part and both tails."""
    return randn(shape, seed, 4.0, dtype=dtype)


def extremes(dtype=torch.float32):
    """A sweep of [-30, 30] and far-out finite values, long enough for the vector loop."""
    far = torch.tensor([-1e4, 1e4, -1e3, 1e3, -100.0, 100.0, -50.0, 50.0, -44.0, 44.0])
    return torch.cat([torch.linspace(-30, 30, 997), far.repeat(5)]).to(dtype)


def test_reference_is_the_tanh_formula():
    x = wide_randn((1000,), 0, torch.float64)
    u = math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)
    torch.testing.assert_close(gelu_tanh_reference(x.float()), (0.5 * x * (1 + torch.tanh(u))).float(),
                               atol=1e-6, rtol=1e-6)


@requires_native
@pytest.mark.parametrize("shape", SHAPES)
def test_native_matches_reference_fp32(shape):
    x = wide_randn(shape, 1)
    out = poisoned_like(x)
    native_ops().gelu_tanh_out(out, x)
    assert not out.isnan().any()
    torch.testing.assert_close(out, gelu_tanh_reference(x), atol=1e-6, rtol=1e-6)


@requires_native
@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("shape", [(5, 123), (3, 40001)])
def test_native_low_precision_within_twice_torch_error(shape, dtype):
    x = wide_randn(shape, 2, dtype)
    expected = gelu_tanh_reference(x.float())
    out = poisoned_like(x)
    native_ops().gelu_tanh_out(out, x)
    assert out.dtype == dtype and not out.isnan().any()
    assert max_err(out, expected) <= 2 * max_err(F.gelu(x, approximate="tanh"), expected)


@requires_native
@pytest.mark.parametrize("dtype", [torch.float32, *LOW])
def test_native_extremes_give_x_or_zero_never_nan(dtype):
    x = extremes(dtype)
    out = poisoned_like(x)
    native_ops().gelu_tanh_out(out, x)
    assert not out.isnan().any()
    tol = 1e-6 if dtype == torch.float32 else torch.finfo(dtype).eps
    torch.testing.assert_close(out.float(), gelu_tanh_reference(x).float(), atol=tol, rtol=tol)


@requires_native
def test_native_in_place_matches_out_of_place():
    x = wide_randn((3, 40001), 3)
    expected = poisoned_like(x)
    native_ops().gelu_tanh_out(expected, x)
    native_ops().gelu_tanh_out(x, x)
    assert torch.equal(x, expected)


@requires_native
def test_native_rejects_an_out_overlapping_part_of_x():
    buf = wide_randn((101,), 4)
    with pytest.raises(RuntimeError, match="out must be x itself or not overlap it"):
        native_ops().gelu_tanh_out(buf[1:], buf[:-1])


def test_native_request_for_float64_fails_with_reason():
    with pytest.raises(ValueError, match=r"'native' cannot run: x is torch.float64; the kernels take float32"):
        gelu_tanh(wide_randn((4, 5), 5, torch.float64), impl="native")


def test_dispatcher_matches_reference_with_and_without_native(monkeypatch):
    x = wide_randn((3, 17, 33), 6)
    expected = gelu_tanh_reference(x)
    torch.testing.assert_close(gelu_tanh(x), expected, atol=1e-6, rtol=1e-6)
    monkeypatch.setattr(_native, "native_library", lambda: _native.NativeLibrary(None, "disabled by the test"))
    assert torch.equal(gelu_tanh(x), expected)


@pytest.mark.parametrize("impl", [None, "torch"])
def test_in_place_writes_into_x(impl):
    x = wide_randn((5, 123), 7)
    expected = gelu_tanh_reference(x)
    out = gelu_tanh(x, impl=impl, inplace=True)
    assert out is x
    torch.testing.assert_close(x, expected, atol=1e-6, rtol=1e-6)


def test_non_contiguous_input_out_of_place_and_in_place():
    x = wide_randn((33, 17), 8).t()  # [17, 33], strided
    expected = gelu_tanh_reference(x)
    out = gelu_tanh(x)
    assert out.is_contiguous()
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)
    assert gelu_tanh(x, inplace=True) is x
    torch.testing.assert_close(x, expected, atol=1e-6, rtol=1e-6)


def test_autograd_runs_the_reference_out_of_place():
    x = wide_randn((4, 9), 9).requires_grad_(True)
    before = x.detach().clone()
    y = gelu_tanh(x, inplace=True)
    y.sum().backward()
    assert torch.equal(x.detach(), before)
    x_ref = before.clone().requires_grad_(True)
    F.gelu(x_ref, approximate="tanh").sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)


def test_custom_ops_pass_opcheck_and_compile():
    x = wide_randn((5, 123), 10)
    torch.library.opcheck(torch.ops.sglang_diffusion.gelu_tanh.default, (x, None))
    torch.library.opcheck(torch.ops.sglang_diffusion.gelu_tanh_.default, (x.clone(), None))
    torch._dynamo.reset()
    expected = gelu_tanh_reference(x)
    compiled = torch.compile(lambda t: gelu_tanh(t) + 1, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), expected + 1, atol=1e-6, rtol=1e-6)
    compiled_in_place = torch.compile(lambda t: gelu_tanh(t * 2, inplace=True), fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled_in_place(x), gelu_tanh_reference(x * 2), atol=1e-6, rtol=1e-6)


PORTABLE = textwrap.dedent(
    """
    import torch
    import sglang_diffusion._C
    from sglang_diffusion.ops.activation import gelu_tanh, gelu_tanh_reference
    assert torch.ops.sglang_diffusion_C.cpu_isa() == "default", torch.ops.sglang_diffusion_C.cpu_isa()
    x = torch.cat([torch.linspace(-30, 30, 40001), torch.tensor([-1e4, 1e4] * 9)])
    for dtype, tol in ((torch.float32, 1e-6), (torch.bfloat16, 2e-2)):
        got = gelu_tanh(x.to(dtype), impl="native")
        assert not got.isnan().any()
        torch.testing.assert_close(got.float(), gelu_tanh_reference(x.to(dtype)).float(), atol=tol, rtol=tol)
    """
)


@requires_native
def test_portable_build_matches_reference():
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "default"}
    result = subprocess.run([sys.executable, "-c", PORTABLE], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, *LOW])
def test_every_impl_on_cuda_matches_reference(dtype):
    x = torch.cat([wide_randn((300001,), 11), extremes()]).to(dtype).cuda()
    expected = gelu_tanh_reference(x.float())
    why_not = {"native": _dispatch.native_why_not(x.device, "gelu_tanh_out"),
               "triton": _dispatch.triton_why_not(x.device)}
    impls = ["torch"] + [impl for impl, why in why_not.items() if why is None]
    for impl in impls:
        out = gelu_tanh(x, impl=impl)
        assert out.dtype == dtype and not out.isnan().any(), impl
        if dtype == torch.float32:
            torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-5, msg=impl)
        else:
            assert max_err(out, expected) <= 2 * max_err(F.gelu(x, approximate="tanh"), expected), impl
