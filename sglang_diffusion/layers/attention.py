"""`Attention`: scaled dot-product attention through the selected backend, [B, S, H, D] in and out.

The module owns no weights: a model's attention blocks hold their projections (named as the
checkpoint names them) and call this for the score/softmax/value part, so that the backend
(`--attention-backend`) and sequence parallelism live in one place: given `seq` (a
`distributed.sharding.SequenceShard`), q, k and v are this rank's shard of the tokens and the
attention runs over the whole sequence (Ulysses all-to-all, ring, or both), padding masked out.
The backend is chosen once per model (`set_backend`); a module used without one picks the
platform default for its inputs on first use.

Key bias. Backends take no mask, but a per-key additive logit bias [B, Sk] (log-multiplicities
of repeated keys, or a large negative value to mask a key out) can ride in extra head channels:
q gets a channel of ones, k the bias divided by the softmax scale, v zeros, so that

    softmax(scale * q'.k') v' = softmax(scale * q.k + bias) v      (in the first D channels)

`keys_with_bias` / `query_for_key_bias` build those; `Attention.forward(..., scale=)` takes the
original scale, since the augmented head dim would change the default.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

KEY_BIAS_CHANNELS = 8  # one carries the bias; the rest keep head dims a multiple of 8
MASKED_LOGIT = -1000.0  # exp() of it is 0 in fp32; small enough to stay finite in fp16 after / scale


def keys_with_bias(k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, scale: float
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """k, v [B, Sk, H, D] and bias [B, Sk] -> k', v' [B, Sk, H, D + KEY_BIAS_CHANNELS]."""
    b, sk, h, _ = k.shape
    extra = k.new_zeros(b, sk, h, KEY_BIAS_CHANNELS)
    extra[..., 0] = (bias / scale).to(k.dtype)[:, :, None]
    return torch.cat([k, extra], dim=-1), F.pad(v, (0, KEY_BIAS_CHANNELS))


def query_for_key_bias(q: torch.Tensor) -> torch.Tensor:
    """q [B, S, H, D] -> q' [B, S, H, D + KEY_BIAS_CHANNELS] with a channel of ones."""
    out = F.pad(q, (0, KEY_BIAS_CHANNELS))
    out[..., q.shape[-1]] = 1
    return out


def masked_keys(like_k: torch.Tensor, like_v: torch.Tensor, length: int, scale: float
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """`length` keys (augmented layout) that no query attends to: zero vectors, masked logit."""
    b, _, h, d = like_k.shape
    k = like_k.new_zeros(b, length, h, d)
    k[..., d - KEY_BIAS_CHANNELS] = MASKED_LOGIT / scale
    return k, like_v.new_zeros(b, length, h, like_v.shape[-1])


class Attention(nn.Module):
    def __init__(self, num_heads: int, head_dim: int):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, head_dim
        self.scale = 1.0 / math.sqrt(head_dim)
        self.backend = None  # an attention.backends AttentionBackend

    def set_backend(self, backend) -> None:
        self.backend = backend

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, head_dim={self.head_dim}, backend={self.backend!r}"

    def resolve_backend(self, device: torch.device, dtype: torch.dtype):
        if self.backend is None:
            from sglang_diffusion.attention.selector import select_attention_backend

            self.backend = select_attention_backend("auto", device=device, dtype=dtype, head_dim=self.head_dim)
        return self.backend

    def takes_key_bias(self, device: torch.device, dtype: torch.dtype) -> bool:
        """Whether the backend also runs the head dim that `keys_with_bias` makes."""
        backend = self.resolve_backend(device, dtype)
        return not type(backend).why_not(backend.device, backend.dtype, self.head_dim + KEY_BIAS_CHANNELS,
                                         backend.options)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seq=None,
                scale: float | None = None) -> torch.Tensor:
        # q [B, Sq, H, D]; k, v [B, Sk, H, D] -> [B, Sq, H, D]
        backend = self.resolve_backend(q.device, q.dtype)
        if seq is not None:  # self-attention over a sequence split across the SP ranks
            assert scale is None, "sequence-parallel attention runs with the default scale"
            return seq.attention(q, k, v, backend)
        out, _ = backend.forward(q, k, v, scale=scale)
        return out

    def joint(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, text_q: torch.Tensor, text_k: torch.Tensor,
              text_v: torch.Tensor, seq=None, text_bias: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Joint attention of a dual-stream DiT: image tokens q, k, v [B, S, H, D] (this rank's
        shard under `seq`, the text replicated on every rank) and text tokens [B, L, H, D]
        attending over both -> (image out [B, S, H, D], text out [B, L, H, D]). `text_bias`
        [B, L]: a logit bias per text key (MASKED_LOGIT masks padded text out)."""
        d = q.shape[-1]
        if text_bias is not None:  # the bias rides in extra head channels; image keys get 0
            q, text_q = query_for_key_bias(q), query_for_key_bias(text_q)
            k, v = keys_with_bias(k, v, text_bias.new_zeros(k.shape[:2]), self.scale)
            text_k, text_v = keys_with_bias(text_k, text_v, text_bias, self.scale)
        # the augmented head dim would change the default softmax scale
        scale = self.scale if text_bias is not None else None
        if seq is not None:
            backend = self.resolve_backend(q.device, q.dtype)
            out, text_out = seq.joint_attention(q, k, v, text_q, text_k, text_v, backend, scale=scale)
        else:
            length = text_q.shape[1]
            out = self.forward(torch.cat([q, text_q], dim=1), torch.cat([k, text_k], dim=1),
                               torch.cat([v, text_v], dim=1), scale=scale)  # [B, S + L, H, D']
            out, text_out = out[:, :-length], out[:, -length:]
        return out[..., :d], text_out[..., :d]
