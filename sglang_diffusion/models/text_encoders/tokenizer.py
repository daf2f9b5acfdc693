"""A fast tokenizer folder (tokenizer.json + tokenizer_config.json) through the `tokenizers`
package alone, called as the text encoding stages call transformers' fast tokenizers
(`T5TokenizerFast`, `PreTrainedTokenizerFast`):

    tokenizer(prompts, padding="max_length", max_length=512, truncation=True, return_tensors="pt")
        -> .input_ids [B, L], .attention_mask [B, L]

tokenizer.json holds the whole pipeline (normaliser, pre-tokeniser, model, post-processor with
the special tokens), so this gives transformers' ids without importing transformers, which
takes seconds of start-up.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import torch

from sglang_diffusion.errors import ModelLoadError


class TokenizedBatch(NamedTuple):
    input_ids: torch.Tensor  # [B, L]
    attention_mask: torch.Tensor  # [B, L]


def _token_text(value) -> str | None:
    """A special token of tokenizer_config.json: a string, or an AddedToken dict with "content"."""
    return value.get("content") if isinstance(value, dict) else value


class JsonTokenizer:
    def __init__(self, backend, *, pad_token: str | None, model_max_length: int | None, padding_side: str = "right"):
        self.backend = backend
        self.pad_token = pad_token
        self.pad_token_id = backend.token_to_id(pad_token) if pad_token is not None else None
        self.model_max_length = model_max_length
        self.padding_side = padding_side

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> JsonTokenizer:
        from tokenizers import Tokenizer

        folder = Path(folder)
        try:
            backend = Tokenizer.from_file(str(folder / "tokenizer.json"))
            config = json.loads((folder / "tokenizer_config.json").read_text()) if (
                folder / "tokenizer_config.json").is_file() else {}
        except Exception as e:  # tokenizers raises a bare Exception for a bad file
            raise ModelLoadError(f"cannot load the tokenizer in {folder}: {e}") from None
        return cls(backend, pad_token=_token_text(config.get("pad_token")),
                   model_max_length=config.get("model_max_length"),
                   padding_side=config.get("padding_side", "right"))

    def __len__(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def __call__(self, text: str | list[str], *, padding: bool | str = False, max_length: int | None = None,
                 truncation: bool = False, add_special_tokens: bool = True, return_attention_mask: bool = True,
                 return_tensors: str | None = "pt") -> TokenizedBatch:
        """transformers' fast-tokenizer call: the backend's own truncation (special tokens kept)
        and padding, set per call as transformers sets them."""
        if return_tensors != "pt":
            raise ValueError("JsonTokenizer returns torch tensors only (return_tensors='pt')")
        length = max_length if max_length is not None else self.model_max_length
        backend = self.backend
        if truncation and length is not None:
            backend.enable_truncation(length)
        else:
            backend.no_truncation()
        if padding:
            if self.pad_token_id is None:
                raise ValueError("this tokenizer has no pad token (tokenizer_config.json's pad_token)")
            backend.enable_padding(direction=self.padding_side, pad_id=self.pad_token_id, pad_token=self.pad_token,
                                   length=length if padding == "max_length" else None)
        else:
            backend.no_padding()
        encodings = backend.encode_batch([text] if isinstance(text, str) else list(text),
                                         add_special_tokens=add_special_tokens)
        if len({len(e.ids) for e in encodings}) > 1:
            raise ValueError("prompts of different lengths need padding to make one tensor")
        return TokenizedBatch(torch.tensor([e.ids for e in encodings], dtype=torch.long),
                              torch.tensor([e.attention_mask for e in encodings], dtype=torch.long))
