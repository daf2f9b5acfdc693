"""The tokenizer.json tokenizer (models/text_encoders/tokenizer.py) against transformers' fast
tokenizers on the same folders: T5TokenizerFast (the Wan / FLUX factory tokenizer) and the demo
model's word-level PreTrainedTokenizerFast; the text stages' call, truncated and padded."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer

from sglang_diffusion.models.text_encoders.tokenizer import JsonTokenizer
from sglang_diffusion.testing import cached_model

PROMPTS = ["a red circle moving right on a blue background", "", "Ünïcode — ‘quotes’ &amp; <b>tags</b>  two  spaces",
           "word " * 600, "A BLUE square, moving LEFT!!"]


@pytest.fixture(scope="module", params=["t5", "demo"])
def folder(request, tmp_path_factory):
    if request.param == "t5":
        return cached_model("wan2.1-t2v", "tiny") / "tokenizer"
    from sglang_diffusion.demo.folder import demo_tokenizer

    path = tmp_path_factory.mktemp("tokenizer")
    demo_tokenizer().save_pretrained(path)
    return path


@pytest.mark.parametrize("length", [512, 16])
@pytest.mark.parametrize("padding", ["max_length", "longest"])
def test_ids_and_mask_as_transformers(folder, length, padding):
    ref, ours = AutoTokenizer.from_pretrained(folder), JsonTokenizer.from_pretrained(folder)
    kwargs = dict(padding=padding, max_length=length, truncation=True, add_special_tokens=True,
                  return_attention_mask=True, return_tensors="pt")
    expected, got = ref(PROMPTS, **kwargs), ours(PROMPTS, **kwargs)
    assert torch.equal(got.input_ids, expected.input_ids)
    assert torch.equal(got.attention_mask, expected.attention_mask)
    assert len(ours) == len(ref) and ours.pad_token_id == ref.pad_token_id


def test_a_broken_folder_is_a_model_load_error(tmp_path):
    from sglang_diffusion.errors import ModelLoadError

    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="cannot load the tokenizer"):
        JsonTokenizer.from_pretrained(tmp_path)
