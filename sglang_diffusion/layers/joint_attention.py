"""`JointAttention`: the dual-stream attention of MM-DiTs (FLUX double-stream blocks,
Qwen-Image): image and text tokens with their own q/k/v projections (each one fused GEMM) and
per-head RMS QK-norms, attending jointly over [text, image] with RoPE over the joint sequence,
then each stream's own output projection.

Parameter names follow diffusers' checkpoints except the fused projections: `to_qkv` stands
for to_q, to_k, to_v and `add_qkv` for add_q_proj, add_k_proj, add_v_proj (a model's loader
joins them, see `models.dits.checkpoint`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sglang_diffusion.layers.attention import Attention, keys_with_bias, query_for_key_bias
from sglang_diffusion.ops.qk_norm import qk_rms_norm
from sglang_diffusion.ops.rope import apply_rope


class JointAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, head_dim: int, eps: float = 1e-6, bias: bool = True):
        """`bias`: whether the projections have biases (FLUX.2's have none)."""
        super().__init__()
        self.head_dim, self.eps = head_dim, eps
        inner = num_heads * head_dim
        self.to_qkv = nn.Linear(dim, 3 * inner, bias=bias)
        self.add_qkv = nn.Linear(dim, 3 * inner, bias=bias)
        self.norm_q = nn.RMSNorm(head_dim, eps=eps)
        self.norm_k = nn.RMSNorm(head_dim, eps=eps)
        self.norm_added_q = nn.RMSNorm(head_dim, eps=eps)
        self.norm_added_k = nn.RMSNorm(head_dim, eps=eps)
        self.to_out = nn.Linear(inner, dim, bias=bias)
        self.to_add_out = nn.Linear(inner, dim, bias=bias)
        self.attn = Attention(num_heads, head_dim)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        return t.unflatten(-1, (-1, self.head_dim))  # [B, S, H*D] -> [B, S, H, D]

    def forward(self, x: torch.Tensor, c: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                text_bias: torch.Tensor | None = None, seq=None) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, S, dim] image, c [B, L, dim] text (both normed), cos/sin [L + S, head_dim / 2]
        -> (image out [B, S, dim], text out [B, L, dim]). `text_bias` [B, L]: a logit bias per
        text key (layers.attention.MASKED_LOGIT masks padded text out, as diffusers' mask does).
        `seq` (a `distributed.sharding.SequenceShard`): x is this rank's shard of the image
        tokens (and cos/sin the text rows then this shard's rows), the text is every rank's."""
        length = c.shape[1]
        q, k, v = self._heads(self.to_qkv(x)).chunk(3, dim=2)  # [B, S, H, D] each
        cq, ck, cv = self._heads(self.add_qkv(c)).chunk(3, dim=2)  # [B, L, H, D] each
        q, k = qk_rms_norm(q, k, self.norm_q.weight, self.norm_k.weight, self.eps, across_heads=False)
        cq, ck = qk_rms_norm(cq, ck, self.norm_added_q.weight, self.norm_added_k.weight, self.eps,
                             across_heads=False)
        q, k = apply_rope(torch.cat([cq, q], dim=1), torch.cat([ck, k], dim=1), cos, sin, interleaved=True)
        if seq is not None:  # the image shard attends with the whole sequence, text replicated
            out, text_out = self.attn.joint(q[:, length:], k[:, length:], v, q[:, :length], k[:, :length], cv, seq,
                                            text_bias)  # [B, S, H, D], [B, L, H, D]
            return self.to_out(out.flatten(2)), self.to_add_out(text_out.flatten(2))
        v = torch.cat([cv, v], dim=1)
        if text_bias is None:
            out = self.attn(q, k, v)
        else:  # the bias rides in extra head channels (see layers.attention)
            k, v = keys_with_bias(k, v, F.pad(text_bias, (0, x.shape[1])), self.attn.scale)  # image keys: 0
            out = self.attn(query_for_key_bias(q), k, v, scale=self.attn.scale)[..., :self.head_dim]
        out = out.flatten(2)  # [B, L + S, H*D]
        return self.to_out(out[:, length:]), self.to_add_out(out[:, :length])
