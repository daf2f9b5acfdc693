"""The native UMT5 encoder (models/text_encoders/umt5.py) against transformers' UMT5EncoderModel
on the same random weights: fp32 to float rounding, bf16 (transformers keeps `wo` in fp32) to
bf16 rounding; tied and untied embeddings; padded prompts."""

from __future__ import annotations

import pytest
import torch
from transformers import UMT5Config
from transformers import UMT5EncoderModel as Reference

from sglang_diffusion.models.text_encoders.umt5 import UMT5EncoderModel
from sglang_diffusion.testing import cached_model


@pytest.fixture(scope="module", params=["wan-tiny", "untied"])
def folder(request, tmp_path_factory):
    if request.param == "wan-tiny":
        return cached_model("wan2.1-t2v", "tiny") / "text_encoder"
    torch.manual_seed(0)
    config = UMT5Config(vocab_size=40, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
                        relative_attention_num_buckets=16, relative_attention_max_distance=20,
                        feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.0)
    model = Reference(config)
    with torch.no_grad():
        model.encoder.embed_tokens.weight.normal_()  # differs from `shared`: the encoder's own must be used
    path = tmp_path_factory.mktemp("umt5") / "text_encoder"
    model.save_pretrained(path)
    return path


def _inputs(vocab: int):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, vocab, (2, 40), generator=g)
    mask = torch.ones(2, 40, dtype=torch.long)
    mask[0, 31:] = 0  # padded prompts, of two lengths
    mask[1, 12:] = 0
    return ids, mask


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_native_umt5_encodes_as_transformers(folder, dtype, tol):
    ref = Reference.from_pretrained(folder, dtype=dtype).eval()
    ours = UMT5EncoderModel.from_pretrained(folder, dtype=dtype)
    ids, mask = _inputs(ref.config.vocab_size)
    with torch.inference_mode():
        expected = ref(ids, mask).last_hidden_state.float()
        got = ours(ids, mask).last_hidden_state
    assert got.dtype == dtype
    assert ((got.float() - expected).norm() / expected.norm()).item() <= tol
    if dtype == torch.bfloat16:
        assert ours.encoder.block[0].layer[1].DenseReluDense.wo.weight.dtype == torch.float32


def test_native_umt5_without_a_mask_and_as_a_tuple(folder):
    ref = Reference.from_pretrained(folder).eval()
    ours = UMT5EncoderModel.from_pretrained(folder)
    ids, _ = _inputs(ref.config.vocab_size)
    with torch.inference_mode():
        torch.testing.assert_close(ours(ids)[0], ref(ids)[0], rtol=1e-5, atol=1e-5)
