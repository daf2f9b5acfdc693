"""What a generation gives back to the CLI, the server and the Python API."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class GenerationResult:
    files: list[Path]
    prompt: str | None
    seed: int
    height: int
    width: int
    num_frames: int  # 1 for an image
    is_video: bool
    fps: int | None
    timings: dict[str, float] = field(default_factory=dict)  # stage -> seconds, with "total"
    peak_memory_bytes: int = 0
    cache: str | None = None  # what step caching did: block-steps computed and skipped
    # when return_frames was asked for: one uint8 [F, H, W, 3] array per output (F == 1 for an image)
    frames: list[np.ndarray] | None = None
