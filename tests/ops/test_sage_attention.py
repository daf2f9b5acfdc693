"""sglang_diffusion.ops.sage_attention: the quantisation, and the stated error bound of the
quantised attention against exact attention (cosine similarity >= 0.999, relative L2 error
<= 2e-2, lse within 2e-2), with K smoothing shown to matter when K has a channel offset."""

import pytest
import torch
import torch.nn.functional as F

from sglang_diffusion.ops.attention import attention_reference
from sglang_diffusion.ops.sage_attention import quantize_int8, sage_attention, sage_attention_reference
from tests.ops.helpers import randn

COS_MIN, REL_L2_MAX, LSE_MAX = 0.999, 2e-2, 2e-2


def make_qkv(b, sq, sk, h, d, seed=0, k_offset=3.0, dtype=torch.float32):
    q = randn((b, sq, h, d), seed, dtype=dtype)
    # K with a per-channel offset, as real keys have: what smoothing removes.
    k = (randn((b, sk, h, d), seed + 1) + k_offset * randn((1, 1, h, d), seed + 3)).to(dtype)
    v = randn((b, sk, h, d), seed + 2, dtype=dtype)
    return q, k, v


def errors(out, lse, q, k, v):
    exact, exact_lse = attention_reference(q.float(), k.float(), v.float())
    cos = F.cosine_similarity(out.float().flatten(), exact.flatten(), dim=0).item()
    rel = ((out.float() - exact).norm() / exact.norm()).item()
    return cos, rel, (lse - exact_lse).abs().max().item()


def test_quantize_int8_gives_integers_within_range_one_scale_per_block():
    x = randn((1, 2, 10, 8), 0, 3.0)
    x8, scale = quantize_int8(x, block=4)
    assert torch.equal(x8, x8.round()) and x8.abs().max() <= 127
    assert torch.equal(scale[..., 0], scale[..., 3]) and not torch.equal(scale[..., 3], scale[..., 4])
    assert (x8 * scale[..., None] - x).abs().max() <= scale.max() / 2 + 1e-6


@pytest.mark.parametrize("gran", ["per_block", "per_token"])
@pytest.mark.parametrize("shape", [(1, 100, 77, 2, 64), (2, 33, 300, 1, 128)])
def test_error_bound_against_exact_attention(shape, gran):
    q, k, v = make_qkv(*shape)
    out, lse = sage_attention_reference(q, k, v, qk_quant_gran=gran)
    cos, rel, lse_err = errors(out, lse, q, k, v)
    assert cos >= COS_MIN and rel <= REL_L2_MAX and lse_err <= LSE_MAX, (cos, rel, lse_err)


def test_error_bound_holds_in_bfloat16():
    q, k, v = make_qkv(1, 64, 96, 2, 64, dtype=torch.bfloat16)
    out, lse = sage_attention(q, k, v)
    assert out.dtype == torch.bfloat16
    cos, rel, lse_err = errors(out, lse, q, k, v)
    assert cos >= COS_MIN and rel <= REL_L2_MAX and lse_err <= LSE_MAX, (cos, rel, lse_err)


def test_k_smoothing_reduces_the_error_of_offset_keys():
    q, k, v = make_qkv(1, 64, 128, 2, 64, k_offset=20.0)
    smoothed = errors(*sage_attention_reference(q, k, v, smooth_k=True), q, k, v)
    raw = errors(*sage_attention_reference(q, k, v, smooth_k=False), q, k, v)
    assert smoothed[1] < raw[1] / 2, (smoothed, raw)


def test_chunked_queries_match_one_chunk(monkeypatch):
    from sglang_diffusion.ops import sage_attention as mod

    q, k, v = make_qkv(1, 70, 50, 2, 32)
    whole = sage_attention_reference(q, k, v, block_q=16)
    monkeypatch.setattr(mod, "_CHUNK_SCORES", 1)  # one quantisation block per chunk
    for a, b in zip(sage_attention_reference(q, k, v, block_q=16), whole):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_dispatcher_runs_torch_on_cpu_and_rejects_unknown_granularity():
    q, k, v = make_qkv(1, 8, 8, 1, 16)
    for a, b in zip(sage_attention(q, k, v), sage_attention_reference(q, k, v)):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="qk_quant_gran"):
        sage_attention(q, k, v, qk_quant_gran="per_warp")
