"""``sliding_tile_attn``: sliding tile attention (STA) for video DiTs, approximate by design
(each query sees a window of tiles); never chosen by ``auto``.

A video DiT's self-attention runs tiled (attention/sliding_tile.py: the DiT reorders its tokens
once per forward and binds each layer's windows, ``tiled``); every other attention through this
backend (cross-attention, full-attention steps) is exact dense attention (``forward``).

Options (``--attention-backend-config``): ``mask_strategy_file_path`` (FastVideo's per step,
layer and head windows; also the ``mask_strategy_file_path`` flag/config key) or ``window`` (one
window for everything, e.g. 3x3x3, in tiles); ``tile_size`` (tokens per tile, e.g. 6x8x8;
default the family's); ``kernel`` (auto, native, triton, torch).
"""

from __future__ import annotations

from typing import Optional

import torch

from sglang_diffusion.attention.backends.base import AttentionBackend
from sglang_diffusion.attention.config import Option
from sglang_diffusion.attention.sliding_tile import MaskStrategy, StepCounter, parse_triple
from sglang_diffusion.errors import ConfigError
from sglang_diffusion.ops import _dispatch
from sglang_diffusion.ops.attention import attention
from sglang_diffusion.ops.sliding_tile_attention import TileLayout, Triple, sliding_tile_attention

KERNELS = ("auto", "native", "triton", "torch")


class SlidingTileAttentionBackend(AttentionBackend):
    name = "sliding_tile_attn"
    exact = False
    OPTIONS = {
        "mask_strategy_file_path": Option("", "FastVideo mask-strategy JSON: a window per step, layer and head."),
        "window": Option("", "One window (wt x wh x ww tiles, e.g. 3x3x3) for every step, layer and head."),
        "tile_size": Option("", "Tokens per tile (t x h x w, e.g. 6x8x8); default the model family's."),
        "kernel": Option("auto", "Which kernel runs.", choices=KERNELS),
    }

    def __init__(self, device, dtype, head_dim, options):
        super().__init__(device, dtype, head_dim, options)
        path, window = self.options["mask_strategy_file_path"], self.options["window"]
        if bool(path) == bool(window):
            raise ConfigError("attention_backend sliding_tile_attn needs exactly one of mask_strategy_file_path "
                              "(a FastVideo mask-strategy file) and window (e.g. --attention-backend-config "
                              f"window=3x3x3){'; both were given' if path else ''}")
        self.strategy = MaskStrategy.from_file(path) if path else MaskStrategy.uniform(parse_triple(window, "window"))
        self.tile_size = parse_triple(self.options["tile_size"], "tile_size") if self.options["tile_size"] else None
        self.counter = StepCounter()

    @classmethod
    def kernels(cls, device, options):
        wanted = options.get("kernel", "auto")
        if wanted != "auto":
            return [wanted]
        return ["triton", "torch"] if device.type == "cuda" else ["native", "torch"]

    @classmethod
    def kernel_why_not(cls, kernel, device, dtype, head_dim) -> Optional[str]:
        if kernel == "triton":
            reason = _dispatch.triton_why_not(device)
            return reason or (f"head dim {head_dim} > 256" if head_dim > 256 else None)
        if kernel == "native":
            reason = _dispatch.native_why_not(device, "sliding_tile_attention_out")
            if reason is None and device.type != "cpu":
                reason = "the _C sliding tile kernel runs on the CPU only"
            if reason is None and dtype not in (torch.float32, torch.bfloat16, torch.float16):
                reason = f"the _C kernel takes float32, bfloat16 or float16, not {dtype}"
            return reason
        return None  # torch

    def forward(self, q, k, v, scale: Optional[float] = None):
        """Dense attention: cross-attention, and self-attention at full-attention steps."""
        return attention(q, k, v, scale, backend="torch" if self.kernel == "torch" else None)

    def tiled(self, layout: TileLayout, windows: tuple[Triple, ...], layer: int, text_len: int = 0) -> "TiledCall":
        """This backend over ``layout``'s tiled tokens with one window per head (layer ``layer``),
        then ``text_len`` text tokens that every query attends to and that attend to every key."""
        return TiledCall(self.kernel, layout, windows, layer, text_len)


class TiledCall:
    """A backend bound to one layer's tiling: ``forward`` runs sliding tile attention over the
    grid's tokens (and text). Under Ulysses the last rank's video queries are padded past the
    grid: those rows come back as zeros (the shard drops them)."""

    name = "sliding_tile_attn"
    returns_lse = True

    def __init__(self, kernel: str, layout: TileLayout, windows: tuple[Triple, ...], layer: int, text_len: int = 0):
        self.kernel, self.layout, self.windows, self.layer, self.text_len = kernel, layout, windows, layer, text_len

    def forward(self, q, k, v, scale: Optional[float] = None):
        # q [B, Sq >= S + L, h, D] (video, padding, text), k, v [B, S + L, h, D] in tiled order
        # -> out [B, Sq, h, D], lse [B, h, Sq]
        s, length = self.layout.num_tokens, self.text_len
        pad = q.shape[1] - s - length
        if pad:
            q = torch.cat([q[:, :s], q[:, s + pad:]], dim=1)
        out, lse = sliding_tile_attention(q, k, v, self.layout, self.windows, length, scale, backend=self.kernel)
        if pad:
            out = torch.cat([out[:, :s], out.new_zeros(out.shape[0], pad, *out.shape[2:]), out[:, s:]], dim=1)
            lse = torch.cat([lse[..., :s], lse.new_zeros(*lse.shape[:2], pad), lse[..., s:]], dim=-1)
        return out, lse
