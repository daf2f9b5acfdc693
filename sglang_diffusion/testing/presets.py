"""The three sizes a family can be built in, and what each means for weights.

- `tiny`: for tests. Every width a handful of channels, one or two layers; builds in about
  a second and generates a few frames of 64x64 in seconds on a 2-core CPU.
- `small`: for CPU benchmarks. A DiT of 4-8 layers and width 256-512 that dominates the run
  time over a few thousand video tokens; text encoder and VAE stay small.
- `full`: for GPU benchmarks. The real model's transformer (and VAE) config; the text
  encoders keep the real hidden size (the DiT reads it) but only the layers the pipeline
  needs. Weights in bf16, built on the GPU when there is one.
"""

from __future__ import annotations

import torch

PRESETS = ("tiny", "small", "full")


def weight_dtype(preset: str) -> torch.dtype:
    """bf16 for `full` as the real checkpoints ship; fp32 elsewhere, the only fast dtype on CPU."""
    return torch.bfloat16 if preset == "full" else torch.float32


def build_device(preset: str) -> torch.device:
    """Where weights are initialised: a 14B+ DiT would take minutes on a CPU and more memory
    than a bf16 copy, so `full` is built on the GPU when one is present."""
    if preset == "full" and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def by_preset(preset: str, tiny, small, full):
    """Pick one of three values by preset; keeps per-family size tables on one line each."""
    return {"tiny": tiny, "small": small, "full": full}[preset]
