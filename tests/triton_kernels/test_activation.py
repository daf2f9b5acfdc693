"""triton_kernels/activation.py, interpreted, against ops/activation.py's reference. fp32 1e-6;
fp16 by the 2x-plain-torch rule; bf16 within one truncation (the interpreter truncates
fp32 -> bf16 casts instead of rounding them)."""

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

from sglang_diffusion.ops.activation import gelu_tanh_reference  # noqa: E402
from sglang_diffusion.triton_kernels.activation import gelu_tanh_fwd  # noqa: E402
from tests.ops.helpers import max_err, poisoned_like, randn  # noqa: E402

# exp(-2u) overflows to inf for very negative x, by design (the result is -0): numpy warns.
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")


def inputs(dtype=torch.float32):
    """Random values over a few blocks plus an odd tail, then [-30, 30] and far-out values."""
    far = torch.tensor([-1e4, 1e4, -1e3, 1e3, -50.0, 50.0])
    return torch.cat([randn((301,), 0, 4.0), torch.linspace(-30, 30, 61), far]).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_gelu_tanh_matches_reference(dtype):
    x = inputs(dtype)
    out = gelu_tanh_fwd(x, poisoned_like(x))
    expected = gelu_tanh_reference(x.float())
    assert not out.isnan().any()
    if dtype == torch.float32:
        torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)
    else:
        assert max_err(out, expected) <= 2 * max_err(F.gelu(x, approximate="tanh"), expected)


def test_gelu_tanh_bf16_within_one_truncation():
    x = inputs(torch.bfloat16)
    out = gelu_tanh_fwd(x, poisoned_like(x))
    expected = gelu_tanh_reference(x.float())
    ulp = 2 * torch.finfo(torch.bfloat16).eps  # a truncation loses up to one ulp (2 eps relative)
    assert ((out.float() - expected).abs() <= ulp * expected.abs() + 1e-6).all()


def test_gelu_tanh_in_place():
    x = inputs().reshape(4, 92)
    expected = gelu_tanh_reference(x)
    assert gelu_tanh_fwd(x, x) is x
    torch.testing.assert_close(x, expected, atol=1e-6, rtol=1e-6)
