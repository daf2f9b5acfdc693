"""Every op on a CUDA device, through each implementation that can run there (triton, native
when _C is built with CUDA, torch), against its reference; and the attention backends. Runs
wherever a GPU is present; skipped elsewhere.

Tolerances: fp32 1e-4 on attention (IEEE dots, different summation order), 1e-5 elsewhere;
bf16/fp16 by flash-attention's rule; sage within ops/sage_attention.py's stated bound.
"""

import pytest
import torch
import torch.nn.functional as F

from sglang_diffusion.ops import _dispatch
from sglang_diffusion.ops.attention import attention, attention_reference
from sglang_diffusion.ops.norm import gated_residual_norm_modulate, gated_residual_norm_modulate_reference
from sglang_diffusion.ops.qk_norm import qk_rms_norm, qk_rms_norm_reference
from sglang_diffusion.ops.rope import apply_rope, apply_rope_reference, rope_cos_sin_1d
from sglang_diffusion.ops.sage_attention import sage_attention
from tests.ops.helpers import attention_in_dtype, max_err, randn

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def impls_on_cuda(op_name):
    """The implementations that can run on this GPU (torch always)."""
    device = torch.device("cuda")
    found = ["torch"]
    if _dispatch.triton_why_not(device) is None:
        found.append("triton")
    if _dispatch.native_why_not(device, op_name) is None:
        found.append("native")
    return found


def cuda(*tensors):
    return [t.cuda() for t in tensors]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(2, 300, 257, 4, 64), (1, 1000, 77, 2, 128), (1, 129, 129, 2, 40)])
def test_attention_on_cuda_matches_reference(shape, dtype):
    b, sq, sk, h, d = shape
    q, k, v = cuda(randn((b, sq, h, d), 0), randn((b, sk, h, d), 1), randn((b, sk, h, d), 2))
    expected, expected_lse = attention_reference(q, k, v)
    ql, kl, vl = (t.to(dtype) for t in (q, k, v))
    for impl in impls_on_cuda("attention_out"):
        out, lse = attention(ql, kl, vl, backend=impl)
        assert out.dtype == dtype and not out.isnan().any(), impl
        if dtype == torch.float32:
            torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4, msg=impl)
        else:
            assert max_err(out, expected) <= 2 * max_err(attention_in_dtype(ql, kl, vl), expected), impl
        torch.testing.assert_close(lse, expected_lse, atol=2e-3, rtol=1e-4, msg=impl)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_sage_attention_on_cuda_within_bound(dtype):
    q = randn((1, 1000, 2, 128), 0).cuda().to(dtype)
    k = (randn((1, 1000, 2, 128), 1) + 3 * randn((1, 1, 2, 128), 3)).cuda().to(dtype)
    v = randn((1, 1000, 2, 128), 2).cuda().to(dtype)
    exact, exact_lse = attention_reference(q.float(), k.float(), v.float())
    for gran in ("per_block", "per_token"):
        out, lse = sage_attention(q, k, v, qk_quant_gran=gran, impl="triton")
        assert F.cosine_similarity(out.float().flatten(), exact.flatten(), dim=0) >= 0.999
        assert (out.float() - exact).norm() / exact.norm() <= 2e-2
        assert (lse - exact_lse).abs().max() <= 2e-2


@pytest.mark.parametrize("interleaved", [True, False])
def test_rope_on_cuda_matches_reference(interleaved):
    q, k = cuda(randn((2, 300, 4, 128), 0), randn((2, 300, 2, 128), 1))
    cos, sin = cuda(*rope_cos_sin_1d(torch.arange(300), 128))
    expected = apply_rope_reference(q, k, cos, sin, interleaved)
    for impl in impls_on_cuda("rope_out"):
        for g, e in zip(apply_rope(q, k, cos, sin, interleaved, impl=impl), expected):
            torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5, msg=impl)


@pytest.mark.parametrize("across", [True, False])
def test_qk_norm_on_cuda_matches_reference(across):
    q, k = cuda(randn((2, 300, 12, 128), 0, 2.0, 0.5), randn((2, 77, 12, 128), 1))
    wq, wk = cuda(randn((1536 if across else 128,), 2, 0.2, 1.0), randn((1536 if across else 128,), 3, 0.2, 1.0))
    expected = qk_rms_norm_reference(q, k, wq, wk, 1e-6, across)
    for impl in impls_on_cuda("qk_rms_norm_out"):
        for g, e in zip(qk_rms_norm(q, k, wq, wk, 1e-6, across, impl=impl), expected):
            torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5, msg=impl)


@pytest.mark.parametrize("norm_type", ["layer", "rms"])
def test_gated_norm_modulate_on_cuda_matches_reference(norm_type):
    residual, x = cuda(randn((2, 300, 1536), 0, 3.0), randn((2, 300, 1536), 1))
    table = randn((2, 6, 1536), 2).cuda()
    gate, scale, shift = table[:, 0:1], table[:, 1:2], table[:, 2:3]  # strided [B, 1, D] views
    expected = gated_residual_norm_modulate_reference(residual, x, gate, scale, shift, None, None, 1e-6, norm_type)
    for impl in impls_on_cuda("gated_residual_norm_modulate_out"):
        got = gated_residual_norm_modulate(residual, x, gate, scale, shift, None, None, 1e-6, norm_type, impl=impl)
        for g, e in zip(got, expected):
            torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5, msg=impl)
