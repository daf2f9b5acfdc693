"""HunyuanVideo video DiT (HunyuanVideo, FastHunyuan), on our layers and ops.

Reads diffusers' `HunyuanVideoTransformer3DModel` folders (text-to-video: no
image_condition_type): every size from config.json, weights from safetensors through the key
map, without building diffusers' class. The math is diffusers' `transformer_hunyuan_video.py`,
in the same order, so outputs agree to float rounding:

    temb = TimestepMLP(t) [+ GuidanceMLP(g)] + PooledMLP(CLIP pooled);  e = SiLU(temb)
    text = token refiner(Llama states): proj_in, then blocks of masked self-attention and a SiLU
           MLP, gated by TimestepMLP'(t) + PooledMLP'(masked mean of the states)
    x = patchify(latents); RoPE over (t, h, w) on the video tokens only
    dual-stream block (video x and text c, each with its own adaLN-Zero of e):
        a_x, a_c = JointAttn([x', c'])           (per-head RMS QK-norm; padded text keys dropped)
        x += gate * to_out(a_x);  x += gate_mlp * FF(AdaLN(x))      (and the same for c)
    single-stream block on [x, c]:
        s' = AdaLN(s);  s += gate * proj_out([Attn(s'), GELU(proj_mlp(s'))])
    out = proj_out(AdaLN(x; final scale, shift)) -> unpatchify

Padded text: diffusers masks the prompt's padding out of every attention; a padded text token
is never a key, so it never changes a real token, and the video output is the same without
it. `encode_context` therefore keeps each prompt's real tokens only (`_real_length`): a
20-token prompt padded to 256 runs the blocks on 20 text tokens. Prompts of different lengths
in one batch run one sample at a time (samples are independent).

What differs from diffusers is where the work goes: the pooled, guidance and refiner-pooled
embeddings and the refiner's input projection depend only on the request (`encode_context`,
once); q, k, v come from one GEMM; the single-stream blocks attend over their joint sequence as it
is (RoPE tables with angle 0 at the text rows) and apply proj_out to [attention, MLP] as two
accumulated GEMMs instead of joining them; norm, modulation and gated residual run as one fused
op, QK-norm and RoPE as ours. Under sequence parallelism
the video tokens are split over the ranks and the text is replicated
(`SequenceShard.joint_attention`).

Sliding tile attention (--attention-backend sliding_tile_attn, `attention.sliding_tile`): the
video tokens and their RoPE rows are put in tiled order once in `embed` and back once in
`final`; block i (dual-stream blocks, then single-stream, numbered on: the mask file's layer
index) attends through `tiling.layer(i, seq)`, where video queries see their window of tiles
and all the text, and the text sees every token.

Forward is embed -> dual-stream blocks -> single-stream blocks -> final, the block protocol
(`models.dits.blocks`) with the state (video [B, s, D], text [B, L, D]).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sglang_diffusion.attention.backends.sliding_tile_attn import SlidingTileAttentionBackend
from sglang_diffusion.attention.sliding_tile import SlidingTiles, TiledForward
from sglang_diffusion.errors import ModelLoadError
from sglang_diffusion.layers.adanorm import AdaNorm
from sglang_diffusion.layers.attention import Attention
from sglang_diffusion.layers.embeddings import TimestepEmbedding, timestep_features
from sglang_diffusion.layers.mlp import FeedForward
from sglang_diffusion.layers.rotary import RotaryEmbedding3D
from sglang_diffusion.models.dits.base import DiTConfig, NativeDiT, check_rope_axes, config_values
from sglang_diffusion.models.dits.blocks import Block, BlockRunner, State, run_blocks
from sglang_diffusion.models.dits.flux import AdaLayerNormContinuous, AdaLayerNormZero, FluxTimeTextEmbedding
from sglang_diffusion.ops.activation import gelu_tanh
from sglang_diffusion.ops.qk_norm import qk_rms_norm
from sglang_diffusion.ops.rope import apply_rope

EPS = 1e-6  # every norm of the model (diffusers hard-codes it)
REFINER_MLP_RATIO = 4.0  # the token refiner's, whatever config.json's mlp_ratio (as diffusers builds it)


# ---- config --------------------------------------------------------------------------------


@dataclass(frozen=True)
class HunyuanVideoConfig(DiTConfig):
    """transformer/config.json (diffusers' constructor arguments), except `patch_size`: the
    (frames, height, width) patch, from config.json's patch_size_t and patch_size."""

    in_channels: int = 16
    out_channels: int | None = 16
    num_attention_heads: int = 24
    attention_head_dim: int = 128
    num_layers: int = 20
    num_single_layers: int = 40
    num_refiner_layers: int = 2
    mlp_ratio: float = 4.0
    patch_size: tuple[int, int, int] = (1, 2, 2)
    qk_norm: str = "rms_norm"
    guidance_embeds: bool = True
    text_embed_dim: int = 4096
    pooled_projection_dim: int = 768
    rope_theta: float = 256.0
    rope_axes_dim: tuple[int, int, int] = (16, 56, 56)

    @classmethod
    def from_dict(cls, raw: dict, where: str = "config.json") -> "HunyuanVideoConfig":
        if raw.get("image_condition_type") is not None:
            raise ModelLoadError(f"{where}: image_condition_type {raw['image_condition_type']!r} (HunyuanVideo "
                                 "image-to-video) has no native transformer; use --backend diffusers")
        raw = dict(raw)
        raw.pop("image_condition_type", None)
        p, p_t = raw.pop("patch_size", 2), raw.pop("patch_size_t", 1)
        values = config_values(cls, raw, where, "HunyuanVideo")
        values["patch_size"] = (int(p_t), int(p), int(p))
        config = cls(**values)
        check_rope_axes(where, "rope_axes_dim", config.rope_axes_dim, config.attention_head_dim)
        if config.qk_norm != "rms_norm":
            raise ModelLoadError(f"{where}: qk_norm {config.qk_norm!r}: the native transformer implements rms_norm")
        return config


def _heads(t: torch.Tensor, head_dim: int) -> torch.Tensor:
    return t.unflatten(-1, (-1, head_dim))  # [B, S, H*D] -> [B, S, H, D]


# ---- token refiner (the text stream's input) --------------------------------------------------


class RefinerAttention(nn.Module):
    """Plain self-attention over the text tokens (no QK-norm, no RoPE)."""

    def __init__(self, dim: int, num_heads: int, head_dim: int):
        super().__init__()
        self.head_dim = head_dim
        self.to_qkv = nn.Linear(dim, 3 * dim)  # checkpoint: to_q, to_k, to_v
        self.to_out = nn.Linear(dim, dim)
        self.attn = Attention(num_heads, head_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = _heads(self.to_qkv(x), self.head_dim).chunk(3, dim=2)  # [B, L, H, D] each
        return self.to_out(self.attn(q, k, v).flatten(2))


class RefinerBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, head_dim: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = AdaNorm(dim, EPS, elementwise_affine=True)
        self.attn = RefinerAttention(dim, num_heads, head_dim)
        self.norm2 = AdaNorm(dim, EPS, elementwise_affine=True)
        self.ff = FeedForward(dim, int(dim * mlp_ratio), activation="silu")
        self.norm_out = nn.Module()
        self.norm_out.linear = nn.Linear(dim, 2 * dim)  # SiLU(temb) -> gate_msa, gate_mlp

    def forward(self, c: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """c [B, L, D] text, emb = SiLU(refiner temb) [B, D]."""
        gate_msa, gate_mlp = self.norm_out.linear(emb).unsqueeze(1).chunk(2, dim=-1)  # [B, 1, D] each
        c, h = self.norm2.residual(c, self.attn(self.norm1(c)), gate_msa)
        return c + self.ff(h) * gate_mlp


class TokenRefiner(nn.Module):
    """diffusers' HunyuanVideoTokenRefiner: the Llama states -> the text stream's tokens."""

    def __init__(self, config: HunyuanVideoConfig):
        super().__init__()
        dim = config.inner_dim
        self.time_text_embed = nn.Module()
        self.time_text_embed.timestep_embedder = TimestepEmbedding(256, dim)
        self.time_text_embed.text_embedder = TimestepEmbedding(config.text_embed_dim, dim)  # linear, SiLU, linear
        self.proj_in = nn.Linear(config.text_embed_dim, dim)
        self.token_refiner = nn.Module()
        self.token_refiner.refiner_blocks = nn.ModuleList(
            RefinerBlock(dim, config.num_attention_heads, config.attention_head_dim, REFINER_MLP_RATIO)
            for _ in range(config.num_refiner_layers))

    def forward(self, text: torch.Tensor, pooled: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        """text [B, L, D] = proj_in(real tokens), pooled [B, D] = text_embedder(their mean),
        timestep [B] -> the refined text [B, L, D]."""
        mlp = self.time_text_embed.timestep_embedder
        temb = mlp(timestep_features(timestep, 256).to(mlp.linear_1.weight.dtype)) + pooled
        emb = F.silu(temb)
        for block in self.token_refiner.refiner_blocks:
            text = block(text, emb)
        return text


# ---- dual-stream and single-stream blocks -----------------------------------------------------


class HunyuanJointAttention(nn.Module):
    """Dual-stream attention: video and text tokens with their own projections and QK-norms,
    attending jointly over [video, text]; RoPE on the video tokens only."""

    def __init__(self, dim: int, num_heads: int, head_dim: int):
        super().__init__()
        self.head_dim = head_dim
        self.to_qkv = nn.Linear(dim, 3 * dim)  # checkpoint: to_q, to_k, to_v
        self.add_qkv = nn.Linear(dim, 3 * dim)  # checkpoint: add_q_proj, add_k_proj, add_v_proj
        self.norm_q = nn.RMSNorm(head_dim, eps=EPS)
        self.norm_k = nn.RMSNorm(head_dim, eps=EPS)
        self.norm_added_q = nn.RMSNorm(head_dim, eps=EPS)
        self.norm_added_k = nn.RMSNorm(head_dim, eps=EPS)
        self.to_out = nn.Linear(dim, dim)
        self.to_add_out = nn.Linear(dim, dim)
        self.attn = Attention(num_heads, head_dim)

    def forward(self, x: torch.Tensor, c: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, seq=None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, S, D] video, c [B, L, D] text (both normed) -> (video out, text out)."""
        q, k, v = _heads(self.to_qkv(x), self.head_dim).chunk(3, dim=2)  # [B, S, H, D] each
        cq, ck, cv = _heads(self.add_qkv(c), self.head_dim).chunk(3, dim=2)  # [B, L, H, D] each
        q, k = qk_rms_norm(q, k, self.norm_q.weight, self.norm_k.weight, EPS, across_heads=False)
        cq, ck = qk_rms_norm(cq, ck, self.norm_added_q.weight, self.norm_added_k.weight, EPS, across_heads=False)
        q, k = apply_rope(q, k, cos, sin, interleaved=True)
        out, text_out = self.attn.joint(q, k, v, cq, ck, cv, seq)  # [B, S, H, D], [B, L, H, D]
        return self.to_out(out.flatten(2)), self.to_add_out(text_out.flatten(2))


class HunyuanVideoTransformerBlock(nn.Module):
    """Dual-stream block."""

    def __init__(self, config: HunyuanVideoConfig):
        super().__init__()
        dim = config.inner_dim
        # 1. Joint attention, each stream with its own modulation
        self.norm1 = AdaLayerNormZero(dim, 6)
        self.norm1_context = AdaLayerNormZero(dim, 6)
        self.attn = HunyuanJointAttention(dim, config.num_attention_heads, config.attention_head_dim)
        # 2. Feed-forwards
        self.norm2 = AdaNorm(dim, EPS)
        self.ff = FeedForward(dim, config.ffn_dim, activation="gelu_tanh")
        self.norm2_context = AdaNorm(dim, EPS)
        self.ff_context = FeedForward(dim, config.ffn_dim, activation="gelu_tanh")

    def forward(self, x: torch.Tensor, c: torch.Tensor, emb: torch.Tensor, cos: torch.Tensor,
                sin: torch.Tensor, seq=None) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, S, D] video, c [B, L, D] text, emb = SiLU(temb) [B, D] -> (x, c)."""
        h, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.norm1(x, emb)
        hc, c_gate_msa, c_shift_mlp, c_scale_mlp, c_gate_mlp = self.norm1_context(c, emb)
        attn_out, context_attn_out = self.attn(h, hc, cos, sin, seq)
        x, h = self.norm2.residual(x, attn_out, gate_msa, scale_mlp, shift_mlp)
        x = x + gate_mlp * self.ff(h)
        c, hc = self.norm2_context.residual(c, context_attn_out, c_gate_msa, c_scale_mlp, c_shift_mlp)
        c = c + c_gate_mlp * self.ff_context(hc)
        return x, c


class SingleAttention(nn.Module):
    """Single-stream attention over [video, text]: q, k, v in one projection, QK-norm, RoPE (the
    text rows of the tables rotate by 0, an exact identity), joint attention."""

    def __init__(self, dim: int, num_heads: int, head_dim: int):
        super().__init__()
        self.head_dim = head_dim
        self.to_qkv = nn.Linear(dim, 3 * dim)  # checkpoint: to_q, to_k, to_v
        self.norm_q = nn.RMSNorm(head_dim, eps=EPS)
        self.norm_k = nn.RMSNorm(head_dim, eps=EPS)
        self.attn = Attention(num_heads, head_dim)

    def forward(self, h: torch.Tensor, length: int, cos, sin, seq=None) -> torch.Tensor:
        """h [B, S + L, D] (normed; L text tokens last), cos, sin [S + L, head_dim / 2] -> [B, S + L, D]."""
        q, k, v = _heads(self.to_qkv(h), self.head_dim).chunk(3, dim=2)  # [B, S + L, H, D] each
        q, k = qk_rms_norm(q, k, self.norm_q.weight, self.norm_k.weight, EPS, across_heads=False)
        q, k = apply_rope(q, k, cos, sin, interleaved=True)
        if seq is None:
            return self.attn(q, k, v).flatten(2)
        split = q.shape[1] - length
        out, text_out = self.attn.joint(q[:, :split], k[:, :split], v[:, :split], q[:, split:], k[:, split:],
                                        v[:, split:], seq)
        return torch.cat([out, text_out], dim=1).flatten(2)


class HunyuanVideoSingleTransformerBlock(nn.Module):
    """Single-stream block: attention and MLP in parallel on [video, text]."""

    def __init__(self, config: HunyuanVideoConfig):
        super().__init__()
        dim = config.inner_dim
        self.norm = AdaLayerNormZero(dim, 3)
        self.attn = SingleAttention(dim, config.num_attention_heads, config.attention_head_dim)
        self.proj_mlp = nn.Linear(dim, config.ffn_dim)
        self.proj_out = nn.Linear(dim + config.ffn_dim, dim)

    def forward(self, x: torch.Tensor, c: torch.Tensor, emb: torch.Tensor, cos: torch.Tensor,
                sin: torch.Tensor, seq=None) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, S, D] video, c [B, L, D] text; cos, sin [S + L, head_dim / 2] (text rows: angle 0)."""
        length, dim = c.shape[1], c.shape[2]
        s = torch.cat([x, c], dim=1)  # [B, S + L, D]
        h, gate = self.norm(s, emb)
        out = self.attn(h, length, cos, sin, seq)  # [B, S + L, D]
        mlp = gelu_tanh(self.proj_mlp(h), inplace=True)  # [B, S + L, mlp_dim]
        # proj_out([out, mlp]) without joining them: the weight's two column blocks, accumulated
        w = self.proj_out.weight
        y = F.linear(out, w[:, :dim], self.proj_out.bias)
        y.view(-1, dim).addmm_(mlp.view(-1, mlp.shape[-1]), w[:, dim:].t())
        s = torch.addcmul(s, gate, y)
        return s[:, :-length], s[:, -length:]


# ---- model ---------------------------------------------------------------------------------


@dataclass
class HunyuanContext:
    """What a request gives every step: the refiner's input (the real text tokens, projected),
    the pooled embeddings and the guidance embedding."""

    text: torch.Tensor  # [B, L, D] context_embedder.proj_in(Llama states), real tokens only
    text_pooled: torch.Tensor  # [B, D] the refiner's text_embedder(mean of the real states)
    pooled: torch.Tensor  # [B, D] time_text_embed.text_embedder(CLIP pooled)
    guidance: torch.Tensor | None  # [B, D] guidance_embedder(g); None without guidance embedding

    @property
    def batch_size(self) -> int:
        return self.text.shape[0]

    @property
    def reference_tokens(self) -> int:
        """Tokens the DiT appends to the latents' under sequence parallelism: none."""
        return 0

    @staticmethod
    def cat(contexts: list["HunyuanContext"]) -> "HunyuanContext | None":
        """Along the batch (classifier-free guidance in one forward); None when the prompts
        differ in length (the branches then run one after the other)."""
        first = contexts[0]
        if any(c.text.shape[1] != first.text.shape[1] for c in contexts):
            return None
        guidance = None if first.guidance is None else torch.cat([c.guidance for c in contexts])
        return HunyuanContext(*(torch.cat([getattr(c, f) for c in contexts]) for f in ("text", "text_pooled",
                                                                                      "pooled")), guidance)


@dataclass
class TextConditioning:
    """One prompt's encodings, as the text stage gives them to `encode_context`."""

    states: torch.Tensor  # [B, L, text_dim] Llama hidden states, padded
    mask: torch.Tensor  # [B, L] 1 at the real tokens (a prefix), 0 at the padding
    pooled: torch.Tensor  # [B, pooled_dim] CLIP pooled output
    guidance: torch.Tensor | None = None  # [B] embedded guidance scale x 1000 (guidance-distilled models)


def _real_length(mask: torch.Tensor) -> torch.Tensor:
    """mask [B, L] -> real tokens per sample [B]; the real tokens must come first (right padding)."""
    lengths = mask.gt(0).sum(1)
    prefix = torch.arange(mask.shape[1], device=mask.device)[None, :] < lengths[:, None]
    if not torch.equal(prefix, mask.gt(0)):
        raise ValueError("encoder_attention_mask: the real tokens must come first (a right-padded prompt)")
    return lengths


class HunyuanVideoTransformer3DModel(NativeDiT):
    config_class = HunyuanVideoConfig
    # Checkpoint fragments -> ours, and our fused projections -> the checkpoint modules they join.
    key_map = {".to_out.0.": ".to_out.", ".net.0.proj.": ".fc_in.", ".net.2.": ".fc_out."}
    fused = {"to_qkv": ("to_q", "to_k", "to_v"), "add_qkv": ("add_q_proj", "add_k_proj", "add_v_proj")}
    # Sliding tile attention: tokens per tile (FastVideo's for HunyuanVideo); the backend's
    # tile_size option overrides it.
    sliding_tile_size = (6, 8, 8)

    def __init__(self, config: HunyuanVideoConfig):
        super().__init__()
        self.config = config
        dim = config.inner_dim
        # 1. Embeddings: patches, text (token refiner), timestep + pooled text + guidance, RoPE
        self.x_embedder = nn.Module()
        self.x_embedder.proj = nn.Conv3d(config.in_channels, dim, kernel_size=config.patch_size,
                                         stride=config.patch_size)
        self.context_embedder = TokenRefiner(config)
        self.time_text_embed = FluxTimeTextEmbedding(dim, config.pooled_projection_dim, config.guidance_embeds)
        self.rope = RotaryEmbedding3D(config.rope_axes_dim, config.rope_theta)
        # 2. Dual-stream, then single-stream blocks
        self.transformer_blocks = nn.ModuleList(HunyuanVideoTransformerBlock(config)
                                                for _ in range(config.num_layers))
        self.single_transformer_blocks = nn.ModuleList(HunyuanVideoSingleTransformerBlock(config)
                                                       for _ in range(config.num_single_layers))
        # 3. Output norm & projection
        self.norm_out = AdaLayerNormContinuous(dim)
        self.proj_out = nn.Linear(dim, math.prod(config.patch_size) * (config.out_channels or config.in_channels))
        self.sliding_tiles: SlidingTiles | None = None  # set by set_attention_backend(sliding_tile_attn)

    def set_attention_backend(self, backend) -> None:
        super().set_attention_backend(backend)
        self.sliding_tiles = None
        if isinstance(backend, SlidingTileAttentionBackend):  # video self-attention runs tiled (see embed)
            c = self.config
            self.sliding_tiles = SlidingTiles(backend, c.num_layers + c.num_single_layers, c.num_attention_heads,
                                              backend.tile_size or self.sliding_tile_size)

    @torch.no_grad()
    def encode_context(self, prompt: TextConditioning, image_embeds=None) -> HunyuanContext:
        """One prompt's encodings -> a HunyuanContext (`image_embeds`: the denoising loop's
        argument for image families; HunyuanVideo text-to-video takes none). The padding is
        dropped: every sample must have the same number of real tokens (see `forward`)."""
        if image_embeds is not None:
            raise ValueError("HunyuanVideo text-to-video takes no image features")
        lengths = _real_length(prompt.mask)
        if bool((lengths != lengths[0]).any()):
            raise ValueError(f"encode_context: the samples' prompts differ in length ({lengths.tolist()}); "
                             "encode them one at a time")
        states = prompt.states[:, :int(lengths[0])].to(self.dtype)  # [B, L', text_dim]
        refiner = self.context_embedder
        pooled_states = states.float().mean(dim=1).to(self.dtype)  # the masked mean: real tokens only
        embed = self.time_text_embed
        pooled = embed.text_embedder(prompt.pooled.to(self.dtype))  # [B, D]
        guidance = None
        if embed.guidance_embedder is not None:
            if prompt.guidance is None:
                raise ValueError("this HunyuanVideo transformer embeds the guidance scale (guidance_embeds): "
                                 "pass guidance")
            g = torch.as_tensor(prompt.guidance, device=states.device).expand(states.shape[0])
            guidance = embed.embed(embed.guidance_embedder, g.to(self.dtype))
        return HunyuanContext(refiner.proj_in(states), refiner.time_text_embed.text_embedder(pooled_states),
                              pooled, guidance)

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor,
                encoder_hidden_states: torch.Tensor | None = None,
                encoder_attention_mask: torch.Tensor | None = None,
                pooled_projections: torch.Tensor | None = None, guidance: torch.Tensor | None = None, *,
                context: HunyuanContext | None = None, seq=None, num_blocks: int | None = None,
                runner: BlockRunner | None = None) -> torch.Tensor:
        """hidden_states [B, C, F, H, W], timestep [B] (the scheduler's t, 0..1000) -> the flow
        prediction [B, C_out, F', H', W']. Give either diffusers' arguments (Llama states [B, L,
        text_dim], their mask [B, L], CLIP pooled [B, pooled_dim], guidance [B] = scale x 1000)
        or a `context` from `encode_context`.

        `seq` (a `distributed.sharding.SequenceShard` over the video tokens): sequence
        parallelism; the prediction is right at this rank's tokens' patches and zero elsewhere.
        `num_blocks`: run only the first blocks (timing probes). `runner`: how the block loop
        runs (step caching, see `models.dits.blocks`); None: every block."""
        if context is None:
            mask = encoder_attention_mask
            if mask is None:
                mask = torch.ones(encoder_hidden_states.shape[:2], device=encoder_hidden_states.device)
            lengths = _real_length(mask)
            if bool((lengths != lengths[0]).any()):  # samples are independent: one at a time
                return torch.cat([self.forward(
                    hidden_states[i:i + 1], timestep.expand(hidden_states.shape[0])[i:i + 1],
                    encoder_hidden_states[i:i + 1], mask[i:i + 1], pooled_projections[i:i + 1],
                    None if guidance is None else guidance.expand(hidden_states.shape[0])[i:i + 1], seq=seq,
                    num_blocks=num_blocks) for i in range(hidden_states.shape[0])])
            context = self.encode_context(TextConditioning(encoder_hidden_states, mask, pooled_projections,
                                                           guidance))
        x, c, emb, cos, sin, tiling = self.embed(hidden_states, timestep, context, seq)
        blocks = self.bound_blocks(emb, cos, sin, c.shape[1], seq, tiling)[:num_blocks]
        x, c = run_blocks(blocks, (x, c), runner, signal=lambda: emb)
        return self.final(x, emb, hidden_states.shape, seq, tiling)

    def forward_branches(self, hidden_states: torch.Tensor, timestep: torch.Tensor, contexts: list[HunyuanContext],
                         joined: HunyuanContext | None = None, seq=None, num_blocks: int | None = None,
                         runners: list[BlockRunner] | None = None) -> list[torch.Tensor]:
        """`forward` of the same latents and timestep under each of `contexts` (the branches of
        true classifier-free guidance), one after the other, or given `joined`
        (`HunyuanContext.cat(contexts)`) as one batch. Every block mixes text and video, so
        nothing is shared between branches. `runners`: one per context, or one for the batch."""
        if joined is not None:
            n = len(contexts)
            out = self.forward(torch.cat([hidden_states] * n), timestep.repeat(n), context=joined, seq=seq,
                               num_blocks=num_blocks, runner=runners[0] if runners else None)
            return list(out.chunk(n))
        runners = runners or [None] * len(contexts)
        return [self.forward(hidden_states, timestep, context=c, seq=seq, num_blocks=num_blocks, runner=r)
                for c, r in zip(contexts, runners)]

    # -- the block protocol: embed -> blocks -> final --------------------------------------------
    def embed(self, hidden_states: torch.Tensor, timestep: torch.Tensor, context: HunyuanContext, seq=None):
        """-> (video tokens x [B, S, D] (this rank's under SP), refined text c [B, L, D],
        SiLU(temb) [B, D], RoPE cos, sin [S, head_dim / 2], tiling). Under sliding tile attention
        (`tiling`; None otherwise or at a full-attention step) x and the RoPE rows are in tiled
        order, reordered here once for all blocks; `final` restores the order."""
        _, _, frames, height, width = hidden_states.shape
        p_t, p_h, p_w = self.config.patch_size
        grid = (frames // p_t, height // p_h, width // p_w)
        cos, sin = self.rope(grid, hidden_states.device)  # [S, D/2] each
        x = self.x_embedder.proj(hidden_states.to(self.dtype))  # [B, D, F', H', W']
        x = x.flatten(2).transpose(1, 2).contiguous()  # [B, S, D]
        b = x.shape[0]
        timestep = timestep.expand(b)
        embed = self.time_text_embed
        temb = embed.embed(embed.timestep_embedder, timestep.to(x.dtype))  # [B, D]
        if context.guidance is not None:
            temb = temb + context.guidance
        temb = temb + context.pooled
        c = self.context_embedder(context.text, context.text_pooled, timestep)  # [B, L, D]
        tiling = self.sliding_tiles.plan(grid, timestep) if self.sliding_tiles is not None else None
        if tiling is not None:  # video tokens and their RoPE rows tile by tile
            layout = tiling.layout
            x, cos, sin = layout.reorder(x, 1), layout.reorder(cos, 0), layout.reorder(sin, 0)
        if seq is not None:  # this rank's video tokens: [B, S, D] -> [B, s, D]
            x, cos, sin = seq.split(x, 1), seq.split(cos, 0), seq.split(sin, 0)
        return x, c, F.silu(temb), cos, sin, tiling

    def bound_blocks(self, emb: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, length: int,
                     seq=None, tiling: TiledForward | None = None) -> list[Block]:
        """Every block as a step (x, c) -> (x, c) with this step's inputs bound: dual-stream, then
        single-stream (their RoPE tables run on over the `length` text tokens with angle 0).
        Under sliding tile attention block i attends through layer i's tiling (wrapping `seq`)."""
        joint_cos = torch.cat([cos, cos.new_ones(length, cos.shape[1])])  # [S + L, head_dim / 2]
        joint_sin = torch.cat([sin, sin.new_zeros(length, sin.shape[1])])

        def bound(i, block, cos, sin) -> Block:
            span = seq if tiling is None else tiling.layer(i, seq)
            return lambda state: block(*state, emb, cos, sin, span)

        dual = len(self.transformer_blocks)
        return [*(bound(i, b, cos, sin) for i, b in enumerate(self.transformer_blocks)),
                *(bound(dual + i, b, joint_cos, joint_sin) for i, b in enumerate(self.single_transformer_blocks))]

    def final(self, x: torch.Tensor, emb: torch.Tensor, shape: torch.Size | tuple, seq=None,
              tiling: TiledForward | None = None) -> torch.Tensor:
        """Output norm, projection & unpatchify -> [B, C_out, F', H', W'] (`shape`: the latents').
        Tiled tokens go back to row-major order; under SP they are gathered first (a rank's tiled
        tokens are not a row-major range), so then the prediction is right at every token."""
        b, _, frames, height, width = shape
        p_t, p_h, p_w = self.config.patch_size
        grid = (frames // p_t, height // p_h, width // p_w)
        x = self.proj_out(self.norm_out(x, emb))  # [B, S, C_out * p_t * p_h * p_w]
        if seq is not None:  # [B, s, ...] -> [B, S, ...]; place: zeros at other ranks' tokens
            x = seq.gather(x, 1) if tiling is not None else seq.place(x, 1)
        if tiling is not None:
            x = tiling.layout.restore(x, 1)
        x = x.reshape(b, *grid, -1, p_t, p_h, p_w)  # [B, F', H', W', C_out, p_t, p_h, p_w]
        x = x.permute(0, 4, 1, 5, 2, 6, 3, 7)  # [B, C_out, F', p_t, H', p_h, W', p_w]
        return x.flatten(6, 7).flatten(4, 5).flatten(2, 3)


def hunyuan_config_of(model: Any) -> HunyuanVideoConfig:
    """Our config from a diffusers model's config (tests build both from one)."""
    return HunyuanVideoConfig.from_dict(dict(model.config))
