"""Our own classes for components that model_index.json names from diffusers or transformers,
where the library's import would cost more start-up than the request's work (seconds each):
a fast tokenizer's tokenizer.json through `tokenizers`, UMT5's encoder, UniPC for flow
matching. Each is tested to compute what the library's class does on the same folder; a folder
outside what ours does (`supports`) loads from its library as before.

Wan's VAE decoder (models/vaes/wan_decoder.py) is chosen by the Wan pipeline itself: whether
a decoder alone will do depends on the request's options (tiling, encoding), not on the folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

_FAST_TOKENIZERS = ("T5TokenizerFast", "PreTrainedTokenizerFast")


def _scheduler_config(folder: Path) -> dict:
    try:
        return json.loads((folder / "scheduler_config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}  # the library's loader reports the broken folder


def native_loader(cls_name: str, folder: Path) -> Callable | None:
    """`load(folder, **kwargs)` of our class standing in for `cls_name` at `folder` (a torch
    module takes `dtype`), or None: the library's class."""
    if cls_name in _FAST_TOKENIZERS and (folder / "tokenizer.json").is_file():
        from sglang_diffusion.models.text_encoders.tokenizer import JsonTokenizer

        return JsonTokenizer.from_pretrained
    if cls_name == "UMT5EncoderModel":
        from sglang_diffusion.models.text_encoders.umt5 import UMT5EncoderModel

        return UMT5EncoderModel.from_pretrained
    if cls_name == "UniPCMultistepScheduler":
        from sglang_diffusion.schedulers import unipc

        if unipc.supports(_scheduler_config(folder)):
            return unipc.UniPCMultistepScheduler.from_pretrained
    return None
