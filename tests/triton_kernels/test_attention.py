"""triton_kernels/attention.py and sage_attention.py, interpreted, against the references.

Tolerances: fp32 1e-5; fp16 by flash-attention's rule (at most twice plain torch's error
against the fp32 reference; bf16 is not held to it here: the interpreter truncates fp32 -> bf16
casts instead of rounding them, doubling the error a GPU would show); sage against its reference within 4 ulps of the output dtype
(the online softmax rounds P per key block, the reference once) and against exact attention
within ops/sage_attention.py's stated bound.
"""

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

from sglang_diffusion.ops.attention import attention_reference  # noqa: E402
from sglang_diffusion.ops.sage_attention import sage_attention_reference  # noqa: E402
from sglang_diffusion.triton_kernels.attention import attention_fwd  # noqa: E402
from sglang_diffusion.triton_kernels.sage_attention import sage_attention_fwd  # noqa: E402
from tests.ops.helpers import attention_in_dtype, max_err, randn  # noqa: E402

# (B, Sq, Sk, H, D): odd lengths over a few 16-row blocks, cross-attention, D not a power of 2.
SHAPES = [(1, 37, 29, 2, 40), (2, 17, 5, 1, 64)]


def make_qkv(b, sq, sk, h, d, dtype=torch.float32, k_offset=0.0):
    q = randn((b, sq, h, d), 0, dtype=dtype)
    k = (randn((b, sk, h, d), 1) + k_offset * randn((1, 1, h, d), 3)).to(dtype)
    v = randn((b, sk, h, d), 2, 1.0, 0.3, dtype=dtype)
    return q, k, v


@pytest.mark.parametrize("shape", SHAPES)
def test_attention_matches_reference_fp32(shape):
    q, k, v = make_qkv(*shape)
    out, lse = attention_fwd(q, k, v, 0.8 / shape[-1] ** 0.5)
    expected, expected_lse = attention_reference(q, k, v, 0.8 / shape[-1] ** 0.5)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse, expected_lse, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16])
def test_attention_low_precision_within_twice_torch_error(dtype):
    q, k, v = make_qkv(*SHAPES[0], dtype=dtype)
    out, lse = attention_fwd(q, k, v, SHAPES[0][-1] ** -0.5)
    assert out.dtype == dtype
    expected, expected_lse = attention_reference(q.float(), k.float(), v.float())
    assert max_err(out, expected) <= 2 * max_err(attention_in_dtype(q, k, v), expected)
    torch.testing.assert_close(lse, expected_lse, atol=1e-4, rtol=1e-5)


def test_attention_reads_strided_views():
    qkv = randn((1, 21, 3, 2, 32), 4)  # [B, S, 3, H, D]
    q, k, v = qkv.unbind(2)
    out, _ = attention_fwd(q, k, v, 32 ** -0.5)
    torch.testing.assert_close(out, attention_reference(q, k, v)[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("gran", ["per_block", "per_token"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_sage_matches_its_reference_and_the_bound(dtype, gran):
    q, k, v = make_qkv(1, 37, 29, 2, 40, dtype=dtype, k_offset=3.0)
    out, lse = sage_attention_fwd(q, k, v, 40 ** -0.5, gran, block_q=16, block_k=16)
    ref, ref_lse = sage_attention_reference(q, k, v, 40 ** -0.5, gran, block_q=16, block_k=16)
    assert max_err(out, ref) <= 4 * torch.finfo(dtype).eps * ref.float().abs().max().item()
    torch.testing.assert_close(lse, ref_lse, atol=2e-3, rtol=1e-4)
    exact, exact_lse = attention_reference(q.float(), k.float(), v.float())
    assert F.cosine_similarity(out.float().flatten(), exact.flatten(), dim=0) >= 0.999
    assert (out.float() - exact).norm() / exact.norm() <= 2e-2
    assert (lse - exact_lse).abs().max() <= 2e-2


def test_sage_rejects_block_sizes_that_are_not_powers_of_two():
    q, k, v = make_qkv(1, 4, 4, 1, 16, dtype=torch.float16)
    with pytest.raises(ValueError, match="block_q must be a power of two"):
        sage_attention_fwd(q, k, v, 0.25, "per_block", block_q=24)
