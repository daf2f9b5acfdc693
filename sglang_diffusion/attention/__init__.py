"""Attention backends behind one selector: ``select_attention_backend`` (selector.py), the
backends in ``backends/`` (one file each) and ``--attention-backend-config`` (config.py)."""

from sglang_diffusion.attention.backends.base import AttentionBackend
from sglang_diffusion.attention.selector import select_attention_backend

__all__ = ["AttentionBackend", "select_attention_backend"]
