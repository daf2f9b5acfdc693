"""UMT5's encoder (Wan's text encoder), our own module with transformers' parameter names, so that
a `UMT5EncoderModel` folder loads into it as it is and `t5_tensor_parallel.shard_t5_encoder`
splits it like transformers' model.

Why not transformers' class: importing transformers costs seconds of start-up, more than a
small model's whole generation. The math is transformers' UMT5 encoder stack:

    x = embed(ids)
    per block: x += o(attention(norm(x)) + relative position bias of that block, mask)
               x += wo(act(wi_0(norm(x))) * wi_1(norm(x)))    (gated; wo(act(wi(.))) otherwise)
    out = final_norm(x)

with T5's RMS norm (no mean, no bias, variance in fp32), unscaled dot products (the bias is
folded into the scores) and, like transformers, `wo` kept in fp32 for a half-precision model
(the residual stream then runs in fp32 from the first feed-forward on).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from sglang_diffusion.errors import ModelLoadError
from sglang_diffusion.loader.weights import load_state_dict, read_config
from sglang_diffusion.models.dits.checkpoint import load_checkpoint

_ACTIVATIONS = {
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu": F.gelu,
    "relu": F.relu,
    "silu": F.silu,
}


@dataclasses.dataclass(frozen=True)
class UMT5Config:
    vocab_size: int
    d_model: int
    d_kv: int
    d_ff: int
    num_layers: int
    num_heads: int
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "gated-gelu"
    tie_word_embeddings: bool = True

    @classmethod
    def from_dict(cls, raw: dict, where: str) -> UMT5Config:
        known = {f.name for f in dataclasses.fields(cls)}
        try:
            config = cls(**{k: v for k, v in raw.items() if k in known})
        except TypeError as e:
            raise ModelLoadError(f"{where}: not a UMT5 encoder config ({e})") from None
        if config.activation not in _ACTIVATIONS:
            raise ModelLoadError(f"{where}: feed_forward_proj {config.feed_forward_proj!r} is not supported "
                                 f"(activations: {', '.join(_ACTIVATIONS)})")
        return config

    @property
    def is_gated(self) -> bool:
        return self.feed_forward_proj.startswith("gated-")

    @property
    def activation(self) -> str:
        act = self.feed_forward_proj.split("-")[-1]
        return "gelu_new" if self.feed_forward_proj == "gated-gelu" else act  # as transformers' UMT5Config


def _embedding(num: int, dim: int) -> nn.Embedding:
    """An nn.Embedding left uninitialised (the checkpoint fills it): its own init, normal_, on the
    meta device imports torch._dynamo (sympy, inductor), seconds of start-up."""
    return nn.Embedding(num, dim, _weight=torch.empty(num, dim))


class EncoderOutput(NamedTuple):
    """transformers' BaseModelOutput as the stages read it: `.last_hidden_state` or `[0]`."""

    last_hidden_state: torch.Tensor


class RMSNorm(nn.Module):
    """T5's layer norm: x / rms(x) * weight, the variance in fp32, the result in a half-precision
    weight's dtype."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        variance = x.float().square().mean(-1, keepdim=True)
        x = x * torch.rsqrt(variance + self.eps)
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            x = x.to(self.weight.dtype)
        return self.weight * x


def relative_position_buckets(length: int, num_buckets: int, max_distance: int, device) -> torch.Tensor:
    """T5's bidirectional bucket of every (query, key) offset [L, L]: half the buckets per
    direction, exact below num_buckets / 4, logarithmic up to max_distance, the last bucket beyond."""
    offset = torch.arange(length, device=device)[None, :] - torch.arange(length, device=device)[:, None]
    half = num_buckets // 2
    buckets = (offset > 0).long() * half
    distance = offset.abs()
    exact = half // 2
    log = torch.log(distance.float() / exact) / math.log(max_distance / exact) * (half - exact)
    large = torch.clamp(exact + log.long(), max=half - 1)
    return buckets + torch.where(distance < exact, distance, large)


class UMT5Attention(nn.Module):
    def __init__(self, config: UMT5Config):
        super().__init__()
        self.n_heads, self.key_value_proj_dim = config.num_heads, config.d_kv
        self.inner_dim = self.n_heads * self.key_value_proj_dim
        self.has_relative_attention_bias = True  # UMT5: every block has its own table
        self.q = nn.Linear(config.d_model, self.inner_dim, bias=False)
        self.k = nn.Linear(config.d_model, self.inner_dim, bias=False)
        self.v = nn.Linear(config.d_model, self.inner_dim, bias=False)
        self.o = nn.Linear(self.inner_dim, config.d_model, bias=False)
        self.relative_attention_bias = _embedding(config.relative_attention_num_buckets, self.n_heads)

    def forward(self, x: torch.Tensor, buckets: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        """`keep` [B, 1, 1, L]: the keys attended to (False on padding)."""
        b, length, _ = x.shape
        q, k, v = (proj(x).view(b, length, -1, self.key_value_proj_dim).transpose(1, 2)  # [B, H, L, D]
                   for proj in (self.q, self.k, self.v))
        bias = self.relative_attention_bias(buckets).permute(2, 0, 1)[None].to(q.dtype)  # [1, H, L, L]
        if keep is not None:
            bias = bias.masked_fill(~keep, torch.finfo(q.dtype).min)  # [B, H, L, L]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0)  # [B, H, L, D]
        return self.o(out.transpose(1, 2).reshape(b, length, -1))


class UMT5FeedForward(nn.Module):
    def __init__(self, config: UMT5Config):
        super().__init__()
        if config.is_gated:
            self.wi_0 = nn.Linear(config.d_model, config.d_ff, bias=False)
            self.wi_1 = nn.Linear(config.d_model, config.d_ff, bias=False)
        else:
            self.wi = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.wo = nn.Linear(config.d_ff, config.d_model, bias=False)
        self.act = _ACTIVATIONS[config.activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.wi_0(x)) * self.wi_1(x) if hasattr(self, "wi_0") else self.act(self.wi(x))
        return self.wo(h.to(self.wo.weight.dtype))


class _Residual(nn.Module):
    """transformers' `layer[i]`: a layer norm and the sublayer (its name kept for the checkpoint keys)."""

    def __init__(self, name: str, sublayer: nn.Module, config: UMT5Config):
        super().__init__()
        self.layer_norm = RMSNorm(config.d_model, config.layer_norm_epsilon)
        self.sublayer_name = name
        self.add_module(name, sublayer)

    def forward(self, x: torch.Tensor, *args) -> torch.Tensor:
        return x + getattr(self, self.sublayer_name)(self.layer_norm(x), *args)


class UMT5Block(nn.Module):
    def __init__(self, config: UMT5Config):
        super().__init__()
        self.layer = nn.ModuleList([_Residual("SelfAttention", UMT5Attention(config), config),
                                    _Residual("DenseReluDense", UMT5FeedForward(config), config)])

    def forward(self, x: torch.Tensor, buckets: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        x = self.layer[0](x, buckets, keep)
        if x.dtype == torch.float16:  # transformers' clamp of fp16 overflow
            x = _clamp_fp16(x)
        x = self.layer[1](x)
        return _clamp_fp16(x) if x.dtype == torch.float16 else x


def _clamp_fp16(x: torch.Tensor) -> torch.Tensor:
    limit = torch.finfo(x.dtype).max
    limit = torch.where(torch.isinf(x).any(), limit - 1000, limit)
    return torch.clamp(x, min=-limit, max=limit)


class UMT5Stack(nn.Module):
    def __init__(self, config: UMT5Config):
        super().__init__()
        self.embed_tokens = _embedding(config.vocab_size, config.d_model)
        self.block = nn.ModuleList([UMT5Block(config) for _ in range(config.num_layers)])
        self.final_layer_norm = RMSNorm(config.d_model, config.layer_norm_epsilon)


class UMT5EncoderModel(nn.Module):
    """`model(input_ids [B, L], attention_mask [B, L])` -> EncoderOutput(last_hidden_state [B, L, C])."""

    def __init__(self, config: UMT5Config):
        super().__init__()
        self.config = config
        self.encoder = UMT5Stack(config)

    def get_input_embeddings(self) -> nn.Module:
        return self.encoder.embed_tokens

    def set_input_embeddings(self, embedding: nn.Module) -> None:
        self.encoder.embed_tokens = embedding

    @classmethod
    def from_pretrained(cls, folder: str | Path, dtype: torch.dtype = torch.float32) -> UMT5EncoderModel:
        """A transformers UMT5EncoderModel folder (config.json + safetensors), in `dtype`."""
        folder = Path(folder)
        config = UMT5Config.from_dict(read_config(folder), str(folder))
        with torch.device("meta"):
            model = cls(config)
        state = load_state_dict(folder)
        # the encoder's table is `shared` when tied (the only copy a tied checkpoint stores)
        shared = state.pop("shared.weight", None)
        if shared is not None and (config.tie_word_embeddings or "encoder.embed_tokens.weight" not in state):
            state["encoder.embed_tokens.weight"] = shared
        keep = ("wo",) if dtype in (torch.float16, torch.bfloat16) else ()
        load_checkpoint(model, state, dtype=dtype, keep_in_fp32=keep, where=str(folder))
        return model.eval().requires_grad_(False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> EncoderOutput:
        encoder, config = self.encoder, self.config
        x = encoder.embed_tokens(input_ids)  # [B, L, C]
        buckets = relative_position_buckets(input_ids.shape[1], config.relative_attention_num_buckets,
                                            config.relative_attention_max_distance, input_ids.device)  # [L, L]
        keep = None if attention_mask is None else attention_mask[:, None, None, :].bool()  # [B, 1, 1, L]
        for block in encoder.block:
            x = block(x, buckets, keep)
        return EncoderOutput(encoder.final_layer_norm(x))
