"""triton_kernels/rope.py, qk_norm.py and norm.py, interpreted, against the references in
sglang_diffusion/ops. fp32 1e-5; fp16 by the 2x-plain-torch rule (bf16 is not held to it here:
the interpreter truncates fp32 -> bf16 casts instead of rounding them; one bf16 test checks the
gated norm within that truncation)."""

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

from sglang_diffusion.ops.norm import gated_residual_norm_modulate_reference, norm_modulate_reference  # noqa: E402
from sglang_diffusion.ops.qk_norm import qk_rms_norm_reference  # noqa: E402
from sglang_diffusion.ops.rope import apply_rope_reference, rope_cos_sin_1d  # noqa: E402
from sglang_diffusion.triton_kernels.norm import norm_modulate_fwd  # noqa: E402
from sglang_diffusion.triton_kernels.qk_norm import qk_rms_norm_fwd  # noqa: E402
from sglang_diffusion.triton_kernels.rope import rope_fwd  # noqa: E402
from tests.ops.helpers import max_err, randn  # noqa: E402

EPS = 1e-6


@pytest.mark.parametrize("interleaved", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_rope_matches_reference(dtype, interleaved):
    q, k = randn((2, 5, 3, 34), 0, dtype=dtype), randn((2, 5, 2, 34), 1, dtype=dtype)
    cos, sin = rope_cos_sin_1d(torch.arange(5) * 7 + 1, 34)
    got = rope_fwd(q, k, cos, sin, interleaved)
    expected = apply_rope_reference(q.float(), k.float(), cos, sin, interleaved)
    if dtype == torch.float32:
        for g, e in zip(got, expected):
            torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5)
        return
    baseline = apply_rope_reference(q, k, cos.to(dtype).float(), sin.to(dtype).float(), interleaved)
    for g, e, base in zip(got, expected, baseline):
        assert g.dtype == dtype and max_err(g, e) <= 2 * max(max_err(base, e), torch.finfo(dtype).eps)


@pytest.mark.parametrize("across", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_qk_norm_matches_reference(dtype, across):
    q, k = randn((2, 5, 3, 34), 0, 2.0, 0.5, dtype=dtype), randn((2, 7, 2, 34), 1, dtype=dtype)
    wq, wk = randn((102 if across else 34,), 2, 0.2, 1.0), randn((68 if across else 34,), 3, 0.2, 1.0)
    got = qk_rms_norm_fwd(q, k, wq, wk, EPS, across)
    expected = qk_rms_norm_reference(q.float(), k.float(), wq, wk, EPS, across)
    for x, w, g, e in zip((q, k), (wq, wk), got, expected):
        if dtype == torch.float32:
            torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5)
            continue
        width = w.shape[0]
        baseline = F.rms_norm(x.reshape(*x.shape[:2], -1) if across else x, (width,), w.to(dtype), EPS)
        assert max_err(g, e) <= 2 * max_err(baseline.reshape(x.shape), e)


@pytest.mark.parametrize("norm_type", ["layer", "rms"])
@pytest.mark.parametrize("mod_shape", [(47,), (2, 1, 47), (2, 5, 47)])
def test_norm_modulate_matches_reference_fp32(mod_shape, norm_type):
    x = randn((2, 5, 47), 0, 2.0, 0.5)
    scale, shift = randn(mod_shape, 1, 0.5), randn(mod_shape, 2)
    weight, bias = randn((47,), 3, 0.2, 1.0), randn((47,), 4, 0.2)
    got = norm_modulate_fwd(x, scale, shift, weight, bias, EPS, norm_type)
    torch.testing.assert_close(got, norm_modulate_reference(x, scale, shift, weight, bias, EPS, norm_type),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("has_gate", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_gated_residual_norm_modulate_matches_reference(dtype, has_gate):
    residual, x = randn((2, 5, 47), 0, 3.0, dtype=dtype), randn((2, 5, 47), 1, dtype=dtype)
    table = randn((2, 6, 47), 2)  # Wan's modulation table: chunks are strided [B, 1, D] views
    gate, scale, shift = (table[:, 0:1], table[:, 1:2], table[:, 2:3])
    gate = gate if has_gate else None
    got_r, got = norm_modulate_fwd(x, scale, shift, None, None, EPS, "layer", residual=residual, gate=gate, gated=True)
    exp_r, exp = gated_residual_norm_modulate_reference(residual.float(), x.float(), gate, scale, shift, eps=EPS)
    if dtype == torch.float32:
        torch.testing.assert_close(got_r, exp_r, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got, exp, atol=1e-5, rtol=1e-5)
        return
    r_lp = residual + (gate.to(dtype) * x if has_gate else x)
    baseline = F.layer_norm(r_lp, (47,), eps=EPS) * (1 + scale.to(dtype)) + shift.to(dtype)
    assert max_err(got_r, exp_r) <= 2 * max_err(r_lp, exp_r)
    assert max_err(got, exp) <= 2 * max_err(baseline, exp)


def test_gated_residual_norm_modulate_bf16_within_one_truncation():
    residual, x = randn((2, 5, 47), 0, 3.0, dtype=torch.bfloat16), randn((2, 5, 47), 1, dtype=torch.bfloat16)
    gate, scale, shift = randn((2, 1, 47), 2), randn((2, 1, 47), 3, 0.5), randn((47,), 4)
    got_r, got = norm_modulate_fwd(x, scale, shift, None, None, EPS, "rms", residual=residual, gate=gate, gated=True)
    exp_r, exp = gated_residual_norm_modulate_reference(residual, x, gate, scale, shift, eps=EPS, norm_type="rms")
    ulp = 2 * torch.finfo(torch.bfloat16).eps  # a truncation loses up to one ulp (2 eps relative)
    assert ((got_r.float() - exp_r.float()).abs() <= ulp * exp_r.float().abs() + 1e-6).all()
    assert ((got.float() - exp.float()).abs() <= 2 * ulp * exp.float().abs().clamp_min(1.0)).all()
