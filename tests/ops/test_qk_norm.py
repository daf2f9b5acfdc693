"""sglang_diffusion.ops.qk_norm: the _C kernel against the reference, the reference against
torch.nn.RMSNorm as Wan (across heads) and FLUX (per head) use it, the dispatcher and
torch.compile. Tolerances: fp32 1e-5; bf16/fp16 by flash-attention's rule."""

import pytest
import torch

from sglang_diffusion.ops import _native
from sglang_diffusion.ops.qk_norm import qk_rms_norm, qk_rms_norm_reference
from tests.ops.helpers import max_err, native_ops, poisoned_like, randn, requires_native

EPS = 1e-6
# (B, S, Sk, Hq, Hk, D)
SHAPES = [(1, 1, 1, 1, 1, 4), (2, 7, 9, 3, 3, 5), (2, 9, 4, 2, 2, 34), (1, 33, 17, 4, 4, 128)]


def make_inputs(b, s, sk, hq, hk, d, across, seed=0, dtype=torch.float32, affine=True):
    q = randn((b, s, hq, d), seed, 2.0, 0.5, dtype=dtype)  # [B, S, Hq, D]
    k = randn((b, sk, hk, d), seed + 1, dtype=dtype)  # [B, Sk, Hk, D]
    wq = randn((hq * d if across else d,), seed + 2, 0.2, 1.0) if affine else None
    wk = randn((hk * d if across else d,), seed + 3, 0.2, 1.0) if affine else None
    return q, k, wq, wk


def test_reference_matches_torch_rmsnorm_modules():
    q, k, wq, wk = make_inputs(2, 7, 9, 3, 3, 8, across=True)
    norm_q = torch.nn.RMSNorm(24, eps=EPS)
    norm_q.weight.data.copy_(wq)
    q_out, _ = qk_rms_norm_reference(q, k, wq, wk, EPS, across_heads=True)
    torch.testing.assert_close(q_out, norm_q(q.flatten(2)).unflatten(2, (3, 8)), atol=1e-6, rtol=1e-6)
    q, k, wq, wk = make_inputs(2, 7, 9, 3, 3, 8, across=False)
    norm_k = torch.nn.RMSNorm(8, eps=EPS)
    norm_k.weight.data.copy_(wk)
    _, k_out = qk_rms_norm_reference(q, k, wq, wk, EPS, across_heads=False)
    torch.testing.assert_close(k_out, norm_k(k), atol=1e-6, rtol=1e-6)


@requires_native
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("across", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_native_matches_reference_fp32(shape, across, affine):
    q, k, wq, wk = make_inputs(*shape, across, affine=affine)
    for x, w, expected in zip((q, k), (wq, wk), qk_rms_norm_reference(q, k, wq, wk, EPS, across)):
        out = poisoned_like(x)
        native_ops().qk_rms_norm_out(out, x, w, EPS, across)
        assert not out.isnan().any()
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@requires_native
@pytest.mark.parametrize("across", [True, False])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_native_low_precision_within_twice_torch_error(dtype, across):
    q, k, wq, wk = make_inputs(2, 9, 4, 2, 2, 34, across, dtype=dtype)
    expected = qk_rms_norm_reference(q.float(), k.float(), wq, wk, EPS, across)
    width = 2 * 34 if across else 34
    for x, w, e in zip((q, k), (wq, wk), expected):
        out = poisoned_like(x)
        native_ops().qk_rms_norm_out(out, x, w, EPS, across)
        flat = x.reshape(*x.shape[:2], -1) if across else x
        baseline = torch.nn.functional.rms_norm(flat, (width,), w.to(dtype), EPS).reshape(x.shape)
        assert max_err(out, e) <= 2 * max_err(baseline, e)


@requires_native
def test_native_rejects_a_weight_of_the_wrong_width():
    q, k, wq, wk = make_inputs(1, 3, 3, 2, 2, 8, across=True)
    with pytest.raises(RuntimeError, match=r"weight must be \[H\*D\] = \[16\]"):
        native_ops().qk_rms_norm_out(torch.empty_like(q), q, wq[:8], EPS, True)


def test_dispatcher_matches_reference_with_and_without_native(monkeypatch):
    q, k, wq, wk = make_inputs(2, 7, 9, 3, 3, 5, across=True)
    expected = qk_rms_norm_reference(q, k, wq, wk, EPS, True)
    for g, e in zip(qk_rms_norm(q, k, wq, wk, EPS, True), expected):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5)
    monkeypatch.setattr(_native, "native_library", lambda: _native.NativeLibrary(None, "disabled by the test"))
    for g, e in zip(qk_rms_norm(q, k, wq, wk, EPS, True), expected):
        assert torch.equal(g, e)


def test_rejects_weights_for_the_other_mode():
    q, k, wq, wk = make_inputs(1, 3, 3, 2, 2, 8, across=False)
    with pytest.raises(ValueError, match=r"weight for q must be \[H\*D\]"):
        qk_rms_norm(q, k, wq, wk, EPS, across_heads=True)


def test_autograd_runs_the_reference():
    q, k, wq, wk = make_inputs(1, 3, 3, 2, 2, 8, across=False)
    wq.requires_grad_(True)
    q_out, _ = qk_rms_norm(q, k, wq, wk, EPS, False)
    q_out.sum().backward()
    assert wq.grad is not None


def test_custom_op_passes_opcheck_and_compiles():
    q, k, wq, wk = make_inputs(2, 5, 3, 2, 2, 8, across=True)
    torch.library.opcheck(torch.ops.sglang_diffusion.qk_rms_norm.default, (q, k, wq, wk, EPS, True, None))
    torch._dynamo.reset()
    compiled = torch.compile(lambda *a: qk_rms_norm(*a, EPS, True), fullgraph=True, backend="aot_eager")
    for g, e in zip(compiled(q, k, wq, wk), qk_rms_norm_reference(q, k, wq, wk, EPS, True)):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5)
