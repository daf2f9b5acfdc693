"""Shared by the DiT tests: diffusers' model built on random weights, saved, and ours loaded
from the saved folder, so both compute with identical weights."""

from __future__ import annotations

import torch


def saved_pair(ref_cls, ours_cls, config: dict, folder, std: float = 0.2):
    """(diffusers' `ref_cls(**config)` with every weight drawn from N(0, std), zero-initialised
    parts too, so that every weight matters; ours loaded from the folder it was saved to)."""
    torch.manual_seed(0)
    ref = ref_cls(**config).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, std)
    ref.save_pretrained(folder)
    return ref, ours_cls.from_pretrained(folder)


def pair_cache(tmp_path_factory, ref_cls, ours_cls, variants: dict, std: float = 0.2):
    """name -> (diffusers model, ours, folder) of `variants[name]`, built once."""
    cache = {}

    def get(name):
        if name not in cache:
            folder = tmp_path_factory.mktemp(name)
            cache[name] = (*saved_pair(ref_cls, ours_cls, variants[name], folder, std), folder)
        return cache[name]

    return get
