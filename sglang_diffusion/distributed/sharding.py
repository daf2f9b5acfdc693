"""A sequence split over the SP ranks: which tokens this rank holds, attention over all of them,
and putting the pieces back together.

S tokens over P = ulysses x ring ranks: every rank holds s = ceil(S / P) token slots; shard i
(the rank at SP index i = ring_rank * ulysses + ulysses_rank) holds tokens [i*s, (i+1)*s), the
last slots past S being zero padding. Padding only ever sits at the end of the sequence, so in
attention the real keys of any block are a prefix of it: the padding is masked out by reading
that prefix only (`SequenceShard.attention`). Padded queries are computed and thrown away.

USP: Ulysses first (inside a ring group's block: after its all-to-all the Ulysses group's U
shards form one contiguous block of U*s tokens), then the ring over the R blocks.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist

from sglang_diffusion.distributed.parallel_state import ParallelGroups
from sglang_diffusion.distributed.ring import merge_partials, ring_attention
from sglang_diffusion.distributed.ulysses import out_to_seq_shards, qkv_to_head_shards, ulysses_attention
from sglang_diffusion.errors import ConfigError

logger = logging.getLogger(__name__)


def backend_for_ring(backend, requested: str, select: Callable[[str], object]):
    """Ring attention merges partial results by their log-sum-exp: a backend that returns none
    is refused when it was asked for by name, and replaced by `fa` when `auto` picked it."""
    if backend.returns_lse:
        return backend
    if requested != "auto":
        raise ConfigError(f"attention_backend {requested}: ring attention (ring_degree > 1) merges partial results "
                          f"by their log-sum-exp, which {backend.name} does not return; use fa or auto")
    chosen = select("fa")
    logger.info("attention backend: fa instead of %s for ring attention (it returns the log-sum-exp)", backend.name)
    return chosen


def _with_lse(backend, scale: float | None = None):
    """One block's attention with its log-sum-exp, which ring attention merges by."""
    def block_attn(q, k, v):
        out, lse = backend.forward(q, k, v, scale)
        if lse is None:
            raise RuntimeError(f"ring attention needs the log-sum-exp; backend {backend.name} returns none")
        return out, lse
    return block_attn


@dataclass(frozen=True)
class SequenceShard:
    num_tokens: int  # S, the real tokens of the whole sequence
    groups: ParallelGroups

    @property
    def size(self) -> int:
        return self.groups.sp.size

    @property
    def index(self) -> int:
        return self.groups.sp.rank

    @property
    def shard_len(self) -> int:
        return math.ceil(self.num_tokens / self.size)

    @property
    def start(self) -> int:
        return self.index * self.shard_len

    @property
    def num_valid(self) -> int:
        """Real tokens in this rank's shard (the rest is padding)."""
        return max(0, min(self.shard_len, self.num_tokens - self.start))

    # -- splitting and gathering -----------------------------------------------------------
    def split(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """This rank's shard_len slots of x along `dim` (which has num_tokens entries), zero-padded."""
        assert x.shape[dim] == self.num_tokens, f"dim {dim} of {tuple(x.shape)} is not {self.num_tokens} tokens"
        local = x.narrow(dim, min(self.start, self.num_tokens), self.num_valid)
        pad = self.shard_len - self.num_valid
        if pad:
            shape = list(local.shape)
            shape[dim] = pad
            local = torch.cat([local, local.new_zeros(shape)], dim=dim)
        return local.contiguous()

    def split_after(self, x: torch.Tensor, dim: int, head: int) -> torch.Tensor:
        """x with `head` entries along `dim` that every rank keeps (the text rows of a joint
        [text, image] RoPE table) followed by num_tokens entries -> the head, then this rank's
        shard of the rest."""
        return torch.cat([x.narrow(dim, 0, head), self.split(x.narrow(dim, head, x.shape[dim] - head), dim)], dim)

    def place(self, local: torch.Tensor, dim: int) -> torch.Tensor:
        """The full-length tensor with this rank's real tokens from `local` (shard_len slots
        along `dim`) in place and zeros at every other rank's tokens (see `owned_mask`)."""
        shape = list(local.shape)
        shape[dim] = self.num_tokens
        full = local.new_zeros(shape)
        full.narrow(dim, min(self.start, self.num_tokens), self.num_valid).copy_(
            local.narrow(dim, 0, self.num_valid))
        return full

    def gather(self, local: torch.Tensor, dim: int) -> torch.Tensor:
        """All ranks' shards along `dim` -> the full num_tokens (every rank gets it)."""
        if self.size == 1:
            return local.narrow(dim, 0, self.num_tokens)
        parts = [torch.empty_like(local) for _ in range(self.size)]
        dist.all_gather(parts, local.contiguous(), group=self.groups.sp.group)
        return torch.cat(parts, dim=dim).narrow(dim, 0, self.num_tokens)

    def owned_mask(self, grid: tuple[int, int, int], patch: tuple[int, int, int],
                   device: torch.device | str) -> torch.Tensor:
        """[1, 1, F, H, W] bool: the latent elements whose patch token is this rank's, for a
        DiT that patchifies [B, C, F, H, W] latents with `patch` into a row-major `grid` of tokens."""
        t = torch.arange(math.prod(grid), device=device)
        mine = (t >= self.start) & (t < self.start + self.num_valid)
        mine = mine.view(grid)
        for axis, p in enumerate(patch):
            mine = mine.repeat_interleave(p, dim=axis)
        return mine[None, None]

    def gather_latents(self, latents: torch.Tensor, grid: tuple[int, int, int],
                       patch: tuple[int, int, int]) -> torch.Tensor:
        """Latents [B, C, F, H, W] whose elements are right only at this rank's tokens (the
        denoising loop's state under SP) -> right everywhere, on every rank. One all-reduce:
        each element comes from exactly one rank, the others add exact zeros."""
        if self.size == 1:
            return latents
        mask = self.owned_mask(grid, patch, latents.device)
        f, h, w = (g * p for g, p in zip(grid, patch))
        out = torch.zeros_like(latents)
        out[:, :, :f, :h, :w] = torch.where(mask, latents[:, :, :f, :h, :w], 0)
        dist.all_reduce(out, group=self.groups.sp.group)
        return out

    # -- attention -------------------------------------------------------------------------
    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend,
                  scale: float | None = None) -> torch.Tensor:
        """Self-attention of this rank's tokens over the whole sequence: q, k, v [B, s, H, D]
        (this rank's shard, padding included) -> out [B, s, H, D]. `backend`: an attention
        backend (.forward(q, k, v, scale) -> (out, lse or None)); ring attention needs its LSE."""
        g = self.groups
        u, r = g.ulysses.size, g.ring.size
        block = u * self.shard_len  # tokens per ring block after the Ulysses exchange
        valid = [max(0, min(block, self.num_tokens - j * block)) for j in range(r)]

        if r == 1:
            def attn(qh, kh, vh):
                return backend.forward(qh, kh[:, :valid[0]], vh[:, :valid[0]], scale)[0]
        else:
            def attn(qh, kh, vh):
                return ring_attention(qh, kh, vh, _with_lse(backend, scale), g.ring, valid)[0]

        return ulysses_attention(q, k, v, attn, g.ulysses)

    def joint_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, text_q: torch.Tensor,
                        text_k: torch.Tensor, text_v: torch.Tensor, backend, scale: float | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """Joint attention of a dual-stream DiT (FLUX.1, FLUX.2, Qwen-Image, HunyuanVideo): this
        rank's shard of the image / video tokens q, k, v [B, s, H, D] and the text tokens
        text_q/k/v [B, L, H, D], the same on every rank, attend over every image token and the
        text -> (image out [B, s, H, D], text out [B, L, H, D], the same on every rank up to
        float rounding). `scale`: the softmax scale (None: the backend's default for D).

        The text rides along: after the Ulysses exchange each rank takes its heads of it, its
        queries join the rank's block of queries and its keys are one more key block, which the
        ring merges in once, by its log-sum-exp; the text outputs' heads are gathered at the end."""
        g = self.groups
        u, r = g.ulysses.size, g.ring.size
        block = u * self.shard_len
        valid = [max(0, min(block, self.num_tokens - j * block)) for j in range(r)]
        length = text_q.shape[1]
        if u > 1:
            q, k, v = qkv_to_head_shards(q, k, v, g.ulysses)  # [B, U*s, H/U, D]
            heads = slice(g.ulysses.rank * q.shape[2], (g.ulysses.rank + 1) * q.shape[2])
            text_q, text_k, text_v = text_q[:, :, heads], text_k[:, :, heads], text_v[:, :, heads]
        queries = torch.cat([q, text_q], dim=1)  # [B, U*s + L, H/U, D]
        if r == 1:
            out = backend.forward(queries, torch.cat([k[:, :valid[0]], text_k], dim=1),
                                  torch.cat([v[:, :valid[0]], text_v], dim=1), scale)[0]
        else:
            block_attn = _with_lse(backend, scale)
            out, lse = ring_attention(queries, k, v, block_attn, g.ring, valid)
            out = merge_partials(out, lse, *block_attn(queries, text_k, text_v))[0].to(q.dtype)
        video, text = out[:, :-length], out[:, -length:]
        if u > 1:
            video = out_to_seq_shards(video.contiguous(), g.ulysses)  # [B, s, H, D]
            parts = [torch.empty_like(text) for _ in range(u)]
            dist.all_gather(parts, text.contiguous(), group=g.ulysses.group)
            text = torch.cat(parts, dim=2)  # [B, L, H, D]
        return video, text
