"""sglang_diffusion.ops.rope: the _C kernel against the reference, the reference against the
complex-multiplication definition, the table builders, the dispatcher and torch.compile.

Tolerances: fp32 1e-5; bf16/fp16 by flash-attention's rule (at most twice plain torch's error).
"""

import pytest
import torch

from sglang_diffusion.ops import _native
from sglang_diffusion.ops.rope import apply_rope, apply_rope_reference, rope_cos_sin_1d, rope_cos_sin_3d
from tests.ops.helpers import max_err, native_ops, poisoned_like, randn, requires_native

# (B, S, Hq, Hk, D): D = 6 and 34 leave scalar tails in both conventions.
SHAPES = [(1, 1, 1, 1, 2), (2, 7, 3, 2, 6), (2, 9, 2, 2, 34), (1, 33, 4, 4, 128), (3, 5, 2, 1, 64)]


def make_inputs(b, s, hq, hk, d, seed=0, dtype=torch.float32):
    q = randn((b, s, hq, d), seed, dtype=dtype)  # [B, S, Hq, D]
    k = randn((b, s, hk, d), seed + 1, dtype=dtype)  # [B, S, Hk, D]
    cos, sin = rope_cos_sin_1d(torch.arange(s) * 7 + 3, d)  # [S, D/2]: large angles too
    return q, k, cos, sin


def native_rope(q, k, cos, sin, interleaved):
    q_out, k_out = poisoned_like(q), poisoned_like(k)
    native_ops().rope_out(q_out, k_out, q, k, cos, sin, interleaved)
    return q_out, k_out


def test_reference_is_complex_multiplication():
    q, k, cos, sin = make_inputs(2, 9, 2, 2, 34)
    rot = torch.polar(torch.ones_like(cos), torch.atan2(sin, cos))  # [S, D/2] e^{i angle}
    for interleaved in (True, False):
        q_out, _ = apply_rope_reference(q, k, cos, sin, interleaved)
        if interleaved:
            z = torch.view_as_complex(q.reshape(*q.shape[:-1], -1, 2))
            expected = torch.view_as_real(z * rot[None, :, None]).flatten(-2)
        else:
            half = q.shape[-1] // 2
            z = torch.complex(q[..., :half], q[..., half:]) * rot[None, :, None]
            expected = torch.cat((z.real, z.imag), dim=-1)
        torch.testing.assert_close(q_out, expected, atol=1e-5, rtol=1e-5)


def test_tables_1d_and_3d():
    cos, sin = rope_cos_sin_1d(torch.arange(5), 8, theta=100.0)
    torch.testing.assert_close(cos[3, 1], torch.tensor(3 * 100.0 ** (-2 / 8)).cos())
    cos3, sin3 = rope_cos_sin_3d((2, 3, 4), (4, 6, 6))
    assert cos3.shape == (24, 8)
    f, h, w = 1, 2, 3  # token (1, 2, 3) of the grid, row-major
    token = (f * 3 + h) * 4 + w
    expected = torch.cat([rope_cos_sin_1d(torch.tensor([p]), d)[1][0] for p, d in ((f, 4), (h, 6), (w, 6))])
    torch.testing.assert_close(sin3[token], expected)


@requires_native
@pytest.mark.parametrize("interleaved", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_native_matches_reference_fp32(shape, interleaved):
    q, k, cos, sin = make_inputs(*shape)
    got = native_rope(q, k, cos, sin, interleaved)
    for g, e in zip(got, apply_rope_reference(q, k, cos, sin, interleaved)):
        assert not g.isnan().any()
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5)


@requires_native
@pytest.mark.parametrize("interleaved", [True, False])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(2, 9, 2, 2, 34), (1, 33, 4, 4, 128)])
def test_native_low_precision_within_twice_torch_error(shape, dtype, interleaved):
    q, k, cos, sin = make_inputs(*shape, dtype=dtype)
    got = native_rope(q, k, cos, sin, interleaved)
    expected = apply_rope_reference(q.float(), k.float(), cos, sin, interleaved)
    # Plain torch in the low dtype: the tables rounded to it, every product rounded.
    baseline = apply_rope_reference(q, k, cos.to(dtype).float(), sin.to(dtype).float(), interleaved)
    for g, e, base in zip(got, expected, baseline):
        assert g.dtype == dtype
        assert max_err(g, e) <= 2 * max(max_err(base, e), torch.finfo(dtype).eps)


@requires_native
def test_native_rejects_bad_tables_with_its_message():
    q, k, cos, sin = make_inputs(1, 4, 2, 2, 16)
    with pytest.raises(RuntimeError, match=r"cos must be \[S, D/2\]"):
        native_ops().rope_out(torch.empty_like(q), torch.empty_like(k), q, k, cos[:, :4], sin, True)
    with pytest.raises(RuntimeError, match="sin must be float32"):
        native_ops().rope_out(torch.empty_like(q), torch.empty_like(k), q, k, cos, sin.double(), True)


def test_dispatcher_matches_reference_with_and_without_native(monkeypatch):
    q, k, cos, sin = make_inputs(2, 7, 3, 2, 6)
    expected = apply_rope_reference(q, k, cos, sin, True)
    for g, e in zip(apply_rope(q, k, cos, sin, True), expected):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5)
    monkeypatch.setattr(_native, "native_library", lambda: _native.NativeLibrary(None, "disabled by the test"))
    for g, e in zip(apply_rope(q, k, cos, sin, True), expected):
        assert torch.equal(g, e)


def test_rejects_tables_of_the_wrong_shape():
    q, k, cos, sin = make_inputs(1, 4, 2, 2, 16)
    with pytest.raises(ValueError, match=r"cos must be \[S, D/2\]"):
        apply_rope(q, k, cos[:3], sin, True)


def test_autograd_runs_the_reference():
    q, k, cos, sin = make_inputs(1, 4, 2, 2, 16)
    q.requires_grad_(True)
    q_out, k_out = apply_rope(q, k, cos, sin, False)
    q_out.sum().backward()
    assert q.grad is not None


def test_custom_op_passes_opcheck_and_compiles():
    q, k, cos, sin = make_inputs(2, 5, 2, 1, 16)
    torch.library.opcheck(torch.ops.sglang_diffusion.apply_rope.default, (q, k, cos, sin, True, None))
    torch._dynamo.reset()
    compiled = torch.compile(lambda *a: apply_rope(*a, True), fullgraph=True, backend="aot_eager")
    for g, e in zip(compiled(q, k, cos, sin), apply_rope_reference(q, k, cos, sin, True)):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5)
