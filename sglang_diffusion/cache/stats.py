"""What caching did over one request: block-steps computed and skipped."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class CacheStats:
    method: str  # what ran, e.g. "DBCache F1B0 ..." or "TeaCache thresh 0.08"
    computed: int = 0  # block-steps: one block run for one step and one guidance branch
    skipped: int = 0

    def count(self, computed: int, skipped: int) -> None:
        self.computed += computed
        self.skipped += skipped

    def describe(self) -> str:
        total = self.computed + self.skipped
        share = f" ({100 * self.skipped / total:.0f}%)" if total else ""
        return f"{self.method}: {self.computed} block-steps computed, {self.skipped} skipped{share}"
