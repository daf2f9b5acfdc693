"""sglang_diffusion.ops.attention: the _C kernel and the chunked torch path against the
reference, the dispatcher, and torch.compile through the custom op.

Tolerances: fp32 1e-5 (outputs) and 1e-5 (lse); bf16/fp16 by flash-attention's rule.
"""

import logging

import pytest
import torch
import torch.nn.functional as F

from sglang_diffusion.ops import _native
from sglang_diffusion.ops import attention as attention_mod
from sglang_diffusion.ops.attention import attention, attention_reference
from tests.ops.helpers import attention_in_dtype, max_err, native_ops, poisoned_like, randn, requires_native

# (B, Sq, Sk, H, D): odd lengths, several query blocks (96) and key blocks (256), cross-
# attention, and head dims with a one-vector (40, 72) and a scalar (20) tail.
SHAPES = [
    (1, 1, 1, 1, 8),
    (2, 37, 29, 3, 64),
    (1, 97, 300, 2, 128),
    (2, 130, 5, 2, 40),
    (1, 200, 513, 1, 72),
    (1, 50, 61, 2, 20),
]


def make_qkv(b, sq, sk, h, d, seed=0, dtype=torch.float32):
    q = randn((b, sq, h, d), seed, dtype=dtype)  # [B, Sq, H, D]
    k = randn((b, sk, h, d), seed + 1, dtype=dtype)  # [B, Sk, H, D]
    v = randn((b, sk, h, d), seed + 2, 1.0, 0.3, dtype=dtype)
    return q, k, v


def native_attention(q, k, v, scale):
    b, sq, h, d = q.shape
    out = poisoned_like(q)
    lse = torch.full((b, h, sq), float("nan"))
    native_ops().attention_out(out, lse, q, k, v, scale)
    return out, lse


def test_reference_matches_torch_sdpa_and_logsumexp():
    q, k, v = make_qkv(2, 37, 29, 3, 64)
    out, lse = attention_reference(q, k, v)
    sdpa = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
    torch.testing.assert_close(out, sdpa, atol=1e-5, rtol=1e-5)
    scores = torch.einsum("bqhd,bkhd->bhqk", q.double(), k.double()) * 64 ** -0.5
    torch.testing.assert_close(lse.double(), torch.logsumexp(scores, dim=-1), atol=1e-5, rtol=1e-5)


@requires_native
@pytest.mark.parametrize("shape", SHAPES)
def test_native_matches_reference_fp32(shape):
    q, k, v = make_qkv(*shape)
    scale = 0.7 / shape[-1] ** 0.5
    out, lse = native_attention(q, k, v, scale)
    assert not out.isnan().any() and not lse.isnan().any()
    expected, expected_lse = attention_reference(q, k, v, scale)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse, expected_lse, atol=1e-5, rtol=1e-5)


@requires_native
def test_native_reads_views_into_a_fused_qkv_projection():
    qkv = randn((2, 41, 3, 2, 32), 5)  # [B, S, 3, H, D]: q, k, v are strided views
    q, k, v = qkv.unbind(2)
    assert not q.is_contiguous()
    out, lse = attention(q, k, v, backend="native")
    expected, expected_lse = attention_reference(q, k, v)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse, expected_lse, atol=1e-5, rtol=1e-5)


@requires_native
def test_native_reads_head_major_memory_in_place():
    """[B, H, S, D] storage viewed as [B, S, H, D]: key rows are contiguous, read without a copy."""
    q, k, v = (randn((2, 3, n, 64), seed).transpose(1, 2) for seed, n in ((0, 70), (1, 300), (2, 300)))
    out, lse = attention(q, k, v, backend="native")
    expected, expected_lse = attention_reference(q, k, v)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse, expected_lse, atol=1e-5, rtol=1e-5)


@requires_native
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(2, 37, 29, 3, 64), (1, 97, 300, 2, 128)])
def test_native_low_precision_within_twice_torch_error(shape, dtype):
    q, k, v = make_qkv(*shape, dtype=dtype)
    out, lse = native_attention(q, k, v, shape[-1] ** -0.5)
    assert out.dtype == dtype and not out.isnan().any()
    expected, expected_lse = attention_reference(q.float(), k.float(), v.float())
    assert max_err(out, expected) <= 2 * max_err(attention_in_dtype(q, k, v), expected)
    torch.testing.assert_close(lse, expected_lse, atol=1e-4, rtol=1e-5)  # fp32 math on the same inputs


@requires_native
def test_native_with_no_keys_gives_zeros_and_minus_infinite_lse():
    q, k, v = make_qkv(1, 5, 0, 2, 16)
    out, lse = native_attention(q, k, v, 0.25)
    assert torch.equal(out, torch.zeros_like(out)) and torch.equal(lse, torch.full_like(lse, -float("inf")))


@requires_native
@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: a.update(q=a["q"][0]), "q must be 4-D"),
        (lambda a: a.update(k=a["k"].double()), "k must be float32, bfloat16 or float16"),
        (lambda a: a.update(v=a["v"][:, :3]), "k and v must have one shape"),
        (lambda a: a.update(k=a["k"][:, :, :1], v=a["v"][:, :, :1]), "k's B, H, D must match q's"),
        (lambda a: a.update(q=a["q"].transpose(2, 3).contiguous().transpose(2, 3)), "contiguous in its last dim"),
        (lambda a: a.update(lse=a["lse"][:, :1]), "lse must be [B, H, Sq]"),
    ],
)
def test_native_rejects_bad_input_with_its_message(change, message):
    q, k, v = make_qkv(2, 7, 9, 2, 16)
    a = {"q": q, "k": k, "v": v, "out": torch.empty_like(q), "lse": torch.empty(2, 2, 7)}
    change(a)
    with pytest.raises(RuntimeError, match=message.replace("[", r"\[").replace("]", r"\]")):
        native_ops().attention_out(a["out"], a["lse"], a["q"], a["k"], a["v"], 0.25)


def test_torch_path_chunks_queries_and_matches_reference(monkeypatch):
    monkeypatch.setattr(attention_mod, "_TORCH_CHUNK_SCORES", 64)  # a few queries per chunk
    q, k, v = make_qkv(2, 37, 29, 3, 24)
    out, lse = attention(q, k, v, backend="torch")
    expected, expected_lse = attention_reference(q, k, v)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(lse, expected_lse, atol=1e-6, rtol=1e-6)


@requires_native
def test_dispatcher_runs_native_on_cpu_and_logs_it_once(caplog, fresh_choice_log):
    q, k, v = make_qkv(1, 9, 11, 2, 32)
    with caplog.at_level(logging.DEBUG, logger="sglang_diffusion.ops"):
        attention(q, k, v)
        attention(q, k, v)
    choices = [r.getMessage() for r in caplog.records if r.getMessage().startswith("attention: ")]
    assert choices == [choices[0]] and "native" in choices[0], choices


def test_dispatcher_falls_back_to_torch_without_native_with_reason(monkeypatch, caplog, fresh_choice_log):
    missing = _native.NativeLibrary(ops=None, missing_reason="disabled by the test")
    monkeypatch.setattr(_native, "native_library", lambda: missing)
    q, k, v = make_qkv(1, 9, 11, 2, 32)
    with caplog.at_level(logging.DEBUG, logger="sglang_diffusion.ops"):
        out, lse = attention(q, k, v)
    torch.testing.assert_close(out, attention_reference(q, k, v)[0], atol=1e-6, rtol=1e-6)
    assert any("disabled by the test" in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError, match="'native' cannot run: sglang_diffusion._C is not available"):
        attention(q, k, v, backend="native")


def test_triton_cannot_run_on_cpu_and_says_why():
    q, k, v = make_qkv(1, 4, 4, 1, 16)
    with pytest.raises(ValueError, match="Triton kernels run on CUDA"):
        attention(q, k, v, backend="triton")


def test_autograd_runs_the_reference():
    q, k, v = make_qkv(1, 6, 7, 2, 16)
    q.requires_grad_(True)
    out, _ = attention(q, k, v)
    out.sum().backward()
    assert q.grad is not None and q.grad.shape == q.shape


def test_rejects_mismatched_shapes():
    q, k, v = make_qkv(1, 6, 7, 2, 16)
    with pytest.raises(ValueError, match="k and v must have one shape"):
        attention(q, k, v[:, :3])


def test_custom_op_passes_opcheck():
    q, k, v = make_qkv(2, 9, 13, 2, 16)
    torch.library.opcheck(torch.ops.sglang_diffusion.attention.default, (q, k, v, 0.25, None))


def test_compiled_attention_traces_through_the_op_in_one_graph():
    def block(q, k, v):
        out, lse = attention(q * 2.0, k, v)
        return out + 1.0, lse

    q, k, v = make_qkv(1, 9, 13, 2, 16)
    torch._dynamo.reset()
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    for got, expected in zip(compiled(q, k, v), block(q, k, v)):
        torch.testing.assert_close(got, expected)
