"""What a generation gives back to the CLI, the server and the Python API."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: `sglang generate --help` imports this module, and numpy costs it 0.1 s
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
    batch_size: int = 1  # outputs of the forward that made these (more than its own when batched with others)

    @property
    def num_outputs(self) -> int:
        return max(len(self.files), len(self.frames or ()), 1)

    def per_output(self) -> list["GenerationResult"]:
        """One result per output (file and frames), the rest shared."""
        if self.num_outputs == 1:
            return [self]
        return [dataclasses.replace(self, files=self.files[i:i + 1],
                                    frames=self.frames[i:i + 1] if self.frames is not None else None)
                for i in range(self.num_outputs)]
