"""Every op on a CUDA device, through each implementation that can run there (triton, native
when _C is built with CUDA, torch), against its reference; and the attention backends. Runs
wherever a GPU is present; skipped elsewhere.

Tolerances: fp32 1e-4 on attention (IEEE dots, different summation order), 1e-5 elsewhere;
bf16/fp16 by flash-attention's rule (at most twice plain torch's error in that dtype); sage
within ops/sage_attention.py's stated bound; the Ulysses layouts exactly.
"""

import pytest
import torch
import torch.nn.functional as F

from sglang_diffusion.attention.selector import select_attention_backend
from sglang_diffusion.errors import ConfigError
from sglang_diffusion.ops import _dispatch
from sglang_diffusion.ops.all_to_all import KINDS, ulysses_permute, ulysses_permute_reference
from sglang_diffusion.ops.attention import attention, attention_reference
from sglang_diffusion.ops.norm import (
    gated_residual_norm_modulate,
    gated_residual_norm_modulate_reference,
    norm_modulate,
    norm_modulate_reference,
)
from sglang_diffusion.ops.qk_norm import qk_rms_norm, qk_rms_norm_reference
from sglang_diffusion.ops.rope import apply_rope, apply_rope_reference, rope_cos_sin_1d
from sglang_diffusion.ops.sage_attention import sage_attention
from tests.ops.helpers import attention_in_dtype, max_err, randn
from tests.ops.test_norm import plain_torch

DTYPES = [torch.float32, torch.bfloat16, torch.float16]

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


def assert_within_rule(got, expected, baseline, dtype, msg):
    """fp32: 1e-5; bf16/fp16: at most twice plain torch's error in that dtype (or its eps)."""
    assert got.dtype == dtype and not got.isnan().any(), msg
    if dtype == torch.float32:
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5, msg=msg)
    else:
        assert max_err(got, expected) <= 2 * max(max_err(baseline, expected), torch.finfo(dtype).eps), msg


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


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("interleaved", [True, False])
def test_rope_on_cuda_matches_reference(interleaved, dtype):
    q, k = cuda(randn((2, 300, 4, 128), 0), randn((2, 300, 2, 128), 1))
    cos, sin = cuda(*rope_cos_sin_1d(torch.arange(300), 128))
    expected = apply_rope_reference(q, k, cos, sin, interleaved)
    ql, kl = q.to(dtype), k.to(dtype)
    # Plain torch in the low dtype: the tables rounded to it, every product rounded.
    baseline = apply_rope_reference(ql, kl, cos.to(dtype).float(), sin.to(dtype).float(), interleaved)
    for impl in impls_on_cuda("rope_out"):
        for g, e, base in zip(apply_rope(ql, kl, cos, sin, interleaved, impl=impl), expected, baseline):
            assert_within_rule(g, e, base, dtype, impl)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("across", [True, False])
def test_qk_norm_on_cuda_matches_reference(across, dtype):
    width = 1536 if across else 128
    q, k = cuda(randn((2, 300, 12, 128), 0, 2.0, 0.5), randn((2, 77, 12, 128), 1))
    wq, wk = cuda(randn((width,), 2, 0.2, 1.0), randn((width,), 3, 0.2, 1.0))
    expected = qk_rms_norm_reference(q, k, wq, wk, 1e-6, across)
    ql, kl = q.to(dtype), k.to(dtype)
    baseline = [F.rms_norm(x.flatten(2) if across else x, (width,), w.to(dtype), 1e-6).view(x.shape)
                for x, w in ((ql, wq), (kl, wk))]
    for impl in impls_on_cuda("qk_rms_norm_out"):
        for g, e, base in zip(qk_rms_norm(ql, kl, wq, wk, 1e-6, across, impl=impl), expected, baseline):
            assert_within_rule(g, e, base, dtype, impl)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm_type", ["layer", "rms"])
def test_norm_modulate_on_cuda_matches_reference(norm_type, dtype):
    x = randn((2, 300, 1536), 0, 3.0, 0.5).cuda()
    table = randn((2, 6, 1536), 1).cuda()
    scale, shift = table[:, 1:2], table[:, 2:3]  # strided [B, 1, D] views
    expected = norm_modulate_reference(x, scale, shift, None, None, 1e-6, norm_type)
    xl, scale_l, shift_l = x.to(dtype), scale.to(dtype), shift.to(dtype)
    baseline = plain_torch(norm_type, xl, scale_l, shift_l, None, None)
    for impl in impls_on_cuda("norm_modulate_out"):
        got = norm_modulate(xl, scale_l, shift_l, None, None, 1e-6, norm_type, impl=impl)
        assert_within_rule(got, expected, baseline, dtype, impl)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm_type", ["layer", "rms"])
def test_gated_norm_modulate_on_cuda_matches_reference(norm_type, dtype):
    residual, x = cuda(randn((2, 300, 1536), 0, 3.0), randn((2, 300, 1536), 1))
    table = randn((2, 6, 1536), 2).cuda()
    gate, scale, shift = table[:, 0:1], table[:, 1:2], table[:, 2:3]  # strided [B, 1, D] views
    expected = gated_residual_norm_modulate_reference(residual, x, gate, scale, shift, None, None, 1e-6, norm_type)
    lp = [t.to(dtype) for t in (residual, x, gate, scale, shift)]
    base_residual = lp[0] + lp[2] * lp[1]
    baseline = (base_residual, plain_torch(norm_type, base_residual, lp[3], lp[4], None, None))
    for impl in impls_on_cuda("gated_residual_norm_modulate_out"):
        got = gated_residual_norm_modulate(*lp, None, None, 1e-6, norm_type, impl=impl)
        for g, e, base in zip(got, expected, baseline):
            assert_within_rule(g, e, base, dtype, impl)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", KINDS)
def test_ulysses_layouts_on_cuda_equal_reference(kind, dtype):
    p, b, s, h, d = 2, 2, 300, 4, 64
    shapes = {"seq_to_head_send": (b, s // p, h, d), "seq_to_head_recv": (p, b, s // p, h // p, d),
              "head_to_seq_send": (b, s, h // p, d), "head_to_seq_recv": (p, b, s // p, h // p, d)}
    x = randn(shapes[kind], 0).cuda().to(dtype)
    expected = ulysses_permute_reference(x, p, kind)
    for impl in (i for i in impls_on_cuda("permute_rows_out") if i != "triton"):  # no Triton kernel for it
        assert torch.equal(ulysses_permute(x, p, kind, impl=impl), expected), impl


# (backend, its `kernel` option): every implementation of every full-attention backend.
BACKEND_KERNELS = [("torch_sdpa", None), ("triton", None), ("fa", "flash_attn"), ("fa", "triton"), ("fa", "native"),
                   ("sage_attn", "sageattention"), ("sage_attn", "triton"), ("sage_attn", "torch")]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("name", "kernel"), BACKEND_KERNELS)
def test_attention_backend_on_cuda_matches_reference(name, kernel, dtype):
    q, k, v = cuda(randn((2, 300, 4, 128), 0), randn((2, 257, 4, 128), 1), randn((2, 257, 4, 128), 2))
    try:
        backend = select_attention_backend(name, device="cuda", dtype=dtype, head_dim=128,
                                           config={"kernel": kernel} if kernel else None)
    except ConfigError as why:
        pytest.skip(str(why))  # e.g. a package not installed, or a dtype that kernel does not take
    expected, expected_lse = attention_reference(q, k, v)
    ql, kl, vl = (t.to(dtype) for t in (q, k, v))
    out, lse = backend.forward(ql, kl, vl)
    assert out.dtype == dtype and out.shape == q.shape and not out.isnan().any(), backend
    if not backend.exact:
        assert F.cosine_similarity(out.float().flatten(), expected.flatten(), dim=0) >= 0.999, backend
        assert (out.float() - expected).norm() / expected.norm() <= 2e-2, backend
    elif dtype == torch.float32:
        torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4, msg=str(backend))
    else:
        assert max_err(out, expected) <= 2 * max_err(attention_in_dtype(ql, kl, vl), expected), backend
    if lse is not None:
        torch.testing.assert_close(lse, expected_lse, atol=2e-2 if not backend.exact else 2e-3, rtol=1e-4,
                                   msg=str(backend))
