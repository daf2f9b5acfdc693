"""FLUX.2 image DiT (FLUX.2-dev), on our layers and ops.

Reads diffusers' `Flux2Transformer2DModel` folders (config.json, safetensors through the key
map). The math is diffusers' `transformer_flux2.py`, in the same order:

    x = x_embedder(latent tokens [, reference image tokens]), c = context_embedder(text states)
    temb = TimestepMLP(t) [+ GuidanceMLP(g)]                         (no pooled text)
    modulations from SiLU(temb), computed once per step and shared by every block:
        image / text double-stream (6 x D each), single-stream (3 x D)
    double-stream block: as FLUX.1's, with SwiGLU feed-forwards and no biases
    single-stream block on s = [c, x]: s += gate * to_out([Attn(s'), SwiGLU(mlp(s'))]),
        q, k, v and the SwiGLU input from one projection (to_qkv_mlp_proj)
    out = proj_out(AdaLN(x; final scale, shift)) on the latent tokens only
    RoPE: 4 axes (t, h, w, l) of each token's ids, theta 2000; text ids (0, 0, 0, l)

As in our FLUX.1 DiT, what a request fixes (text projection, guidance embedding, reference
image tokens, RoPE tables) is computed once per request in `encode_context`, and sequence
parallelism splits the image and reference tokens and keeps the text on every rank.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from sglang_diffusion.errors import ModelLoadError
from sglang_diffusion.layers.adanorm import AdaNorm
from sglang_diffusion.layers.attention import Attention
from sglang_diffusion.layers.embeddings import TimestepEmbedding, timestep_features
from sglang_diffusion.layers.joint_attention import JointAttention
from sglang_diffusion.models.dits.base import DiTConfig, check_rope_axes, config_values
from sglang_diffusion.models.dits.blocks import Block, BlockRunner, run_blocks
from sglang_diffusion.models.dits.flux import (MMDiT, AdaLayerNormContinuous, joint_single_attention, rope_tables,
                                              single_stream_projection)
from sglang_diffusion.ops.qk_norm import qk_rms_norm


@dataclass(frozen=True)
class Flux2Config(DiTConfig):
    """transformer/config.json, field for field (diffusers' constructor arguments)."""

    patch_size: int = 1
    in_channels: int = 128
    out_channels: int | None = None
    num_layers: int = 8
    num_single_layers: int = 48
    attention_head_dim: int = 128
    num_attention_heads: int = 48
    joint_attention_dim: int = 15360
    timestep_guidance_channels: int = 256
    mlp_ratio: float = 3.0
    axes_dims_rope: tuple[int, ...] = (32, 32, 32, 32)
    rope_theta: float = 2000
    eps: float = 1e-6
    guidance_embeds: bool = True

    @classmethod
    def from_dict(cls, raw: dict, where: str = "config.json") -> "Flux2Config":
        config = cls(**config_values(cls, raw, where, "FLUX.2"))
        check_rope_axes(where, "axes_dims_rope", config.axes_dims_rope, config.attention_head_dim)
        if config.patch_size != 1:
            raise ModelLoadError(f"{where}: patch_size {config.patch_size}: the FLUX.2 transformer takes patch_size 1")
        return config


def latent_ids(height: int, width: int, t: float = 0.0, device=None) -> torch.Tensor:
    """Position ids [height * width, 4] of a latent grid, row-major: (t, row, column, 0); t is
    0 for the generated image, 10 + 10 i for reference image i (diffusers' _prepare_image_ids)."""
    ids = torch.zeros(height, width, 4, device=device)
    ids[..., 0] = t
    ids[..., 1] = torch.arange(height, device=device)[:, None]
    ids[..., 2] = torch.arange(width, device=device)[None, :]
    return ids.reshape(height * width, 4)


def text_ids(length: int, device=None) -> torch.Tensor:
    """Text position ids [length, 4]: (0, 0, 0, token index)."""
    ids = torch.zeros(length, 4, device=device)
    ids[:, 3] = torch.arange(length, device=device)
    return ids


def swiglu(x: torch.Tensor) -> torch.Tensor:
    """SiLU(first half) * second half, along the last dim."""
    a, b = x.chunk(2, dim=-1)
    return F.silu(a) * b


class Flux2FeedForward(nn.Module):
    def __init__(self, dim: int, inner_dim: int):
        super().__init__()
        self.linear_in = nn.Linear(dim, 2 * inner_dim, bias=False)
        self.linear_out = nn.Linear(inner_dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_out(swiglu(self.linear_in(x)))


class Flux2Modulation(nn.Module):
    """SiLU(temb) -> `sets` x (shift, scale, gate), each [B, 1, D]; shared by every block of a kind."""

    def __init__(self, dim: int, sets: int):
        super().__init__()
        self.linear = nn.Linear(dim, 3 * sets * dim, bias=False)

    def forward(self, emb: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.linear(emb).unsqueeze(1).chunk(self.linear.out_features // emb.shape[-1], dim=-1)


class Flux2TransformerBlock(nn.Module):
    """Double-stream block; its modulation comes from the model (shared)."""

    def __init__(self, config: Flux2Config):
        super().__init__()
        dim, eps = config.inner_dim, config.eps
        # 1. Joint attention
        self.norm1 = AdaNorm(dim, eps)
        self.norm1_context = AdaNorm(dim, eps)
        self.attn = JointAttention(dim, config.num_attention_heads, config.attention_head_dim, eps, bias=False)
        # 2. Feed-forwards
        self.norm2 = AdaNorm(dim, eps)
        self.ff = Flux2FeedForward(dim, config.ffn_dim)
        self.norm2_context = AdaNorm(dim, eps)
        self.ff_context = Flux2FeedForward(dim, config.ffn_dim)

    def forward(self, x: torch.Tensor, c: torch.Tensor, mod_img: tuple, mod_txt: tuple, cos: torch.Tensor,
                sin: torch.Tensor, seq=None) -> tuple[torch.Tensor, torch.Tensor]:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod_img
        c_shift_msa, c_scale_msa, c_gate_msa, c_shift_mlp, c_scale_mlp, c_gate_mlp = mod_txt
        attn_out, context_attn_out = self.attn(self.norm1(x, scale_msa, shift_msa),
                                               self.norm1_context(c, c_scale_msa, c_shift_msa), cos, sin, seq=seq)
        x, h = self.norm2.residual(x, attn_out, gate_msa, scale_mlp, shift_mlp)
        x = torch.addcmul(x, gate_mlp, self.ff(h))
        c, hc = self.norm2_context.residual(c, context_attn_out, c_gate_msa, c_scale_mlp, c_shift_mlp)
        c = torch.addcmul(c, c_gate_mlp, self.ff_context(hc))
        return x, c


class Flux2ParallelSelfAttention(nn.Module):
    """The single-stream block's fused projection, attention and SwiGLU MLP, one output projection."""

    def __init__(self, config: Flux2Config):
        super().__init__()
        dim, self.head_dim, eps = config.inner_dim, config.attention_head_dim, config.eps
        self.mlp_dim = config.ffn_dim
        self.to_qkv_mlp_proj = nn.Linear(dim, 3 * dim + 2 * self.mlp_dim, bias=False)
        self.norm_q = nn.RMSNorm(self.head_dim, eps=eps)
        self.norm_k = nn.RMSNorm(self.head_dim, eps=eps)
        self.to_out = nn.Linear(dim + self.mlp_dim, dim, bias=False)
        self.attn = Attention(config.num_attention_heads, self.head_dim)
        self.eps = eps

    def forward(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, length: int = 0,
                seq=None, image_only: bool = False) -> torch.Tensor:
        """h [B, L + S, D] = [text, image] (normed) -> [B, L + S, D] (`length`: L); `image_only`
        (the last block): the S image rows alone (see `flux.FluxSingleTransformerBlock`)."""
        dim = h.shape[-1]
        qkv, mlp = single_stream_projection(self.to_qkv_mlp_proj, h, 3 * dim, length, image_only)
        q, k, v = qkv.unflatten(-1, (-1, self.head_dim)).chunk(3, dim=2)  # [B, L + S, H, D] each
        q, k = qk_rms_norm(q, k, self.norm_q.weight, self.norm_k.weight, self.eps, across_heads=False)
        out = joint_single_attention(self.attn, q, k, v, cos, sin, length, seq, image_only).flatten(2)
        # to_out of [out, SwiGLU(mlp)] as two GEMMs into one result: no concatenated copy
        y = F.linear(out, self.to_out.weight[:, :dim])
        y.view(-1, dim).addmm_(swiglu(mlp).view(-1, self.mlp_dim), self.to_out.weight[:, dim:].t())
        return y


class Flux2SingleTransformerBlock(nn.Module):
    def __init__(self, config: Flux2Config):
        super().__init__()
        self.norm = AdaNorm(config.inner_dim, config.eps)
        self.attn = Flux2ParallelSelfAttention(config)

    def forward(self, s: torch.Tensor, mod: tuple, cos: torch.Tensor, sin: torch.Tensor, length: int = 0,
                seq=None, image_only: bool = False) -> torch.Tensor:
        shift, scale, gate = mod
        out = self.attn(self.norm(s, scale, shift), cos, sin, length, seq, image_only)
        return torch.addcmul(s[:, length:] if image_only else s, gate, out)


class Flux2TimestepGuidanceEmbeddings(nn.Module):
    def __init__(self, channels: int, dim: int, guidance: bool):
        super().__init__()
        self.channels = channels
        self.timestep_embedder = TimestepEmbedding(channels, dim, bias=False)
        self.guidance_embedder = TimestepEmbedding(channels, dim, bias=False) if guidance else None

    def embed(self, mlp: TimestepEmbedding, t: torch.Tensor) -> torch.Tensor:
        """t [B] (times 1000, in the model's dtype) -> [B, D]."""
        return mlp(timestep_features(t, self.channels).to(t.dtype))


@dataclass
class Flux2Context:
    """What a request gives every step: projected text, guidance embedding, reference image
    tokens (embedded) and their ids, and (filled on first use) RoPE tables per latent grid."""

    text: torch.Tensor  # [B, L, D]
    guidance: torch.Tensor | None  # [B, D]
    txt_ids: torch.Tensor  # [L, 4]
    reference: torch.Tensor | None = None  # [B, R, D] x_embedder(reference latent tokens)
    reference_ids: torch.Tensor | None = None  # [R, 4]
    tables: dict = field(default_factory=dict, repr=False)

    @property
    def batch_size(self) -> int:
        return self.text.shape[0]

    @property
    def reference_tokens(self) -> int:
        """Tokens the DiT appends to the image's: the reference images' (R)."""
        return 0 if self.reference is None else self.reference.shape[1]

    @staticmethod
    def cat(contexts: list["Flux2Context"]) -> "Flux2Context":
        first = contexts[0]

        def joined(name):
            return None if getattr(first, name) is None else torch.cat([getattr(c, name) for c in contexts])

        return Flux2Context(joined("text"), joined("guidance"), first.txt_ids, joined("reference"),
                            first.reference_ids, first.tables)


class Flux2Transformer2DModel(MMDiT):
    config_class = Flux2Config
    key_map = {".to_out.0.": ".to_out."}
    fused = {"to_qkv": ("to_q", "to_k", "to_v"), "add_qkv": ("add_q_proj", "add_k_proj", "add_v_proj")}
    patch_size = (1, 1)  # the latents [B, 128, H/16, W/16] are already 2x2-patchified: one token per element

    def __init__(self, config: Flux2Config):
        super().__init__()
        self.config = config
        dim = config.inner_dim
        # 1. Embeddings and the shared modulations
        self.time_guidance_embed = Flux2TimestepGuidanceEmbeddings(config.timestep_guidance_channels, dim,
                                                                   config.guidance_embeds)
        self.double_stream_modulation_img = Flux2Modulation(dim, 2)
        self.double_stream_modulation_txt = Flux2Modulation(dim, 2)
        self.single_stream_modulation = Flux2Modulation(dim, 1)
        self.x_embedder = nn.Linear(config.in_channels, dim, bias=False)
        self.context_embedder = nn.Linear(config.joint_attention_dim, dim, bias=False)
        # 2. Double-stream, then single-stream blocks
        self.transformer_blocks = nn.ModuleList(Flux2TransformerBlock(config) for _ in range(config.num_layers))
        self.single_transformer_blocks = nn.ModuleList(Flux2SingleTransformerBlock(config)
                                                       for _ in range(config.num_single_layers))
        # 3. Output norm & projection
        self.norm_out = AdaLayerNormContinuous(dim, bias=False, eps=config.eps)
        self.proj_out = nn.Linear(dim, config.out_channels or config.in_channels, bias=False)

    @torch.no_grad()
    def encode_context(self, encoder_hidden_states: torch.Tensor, guidance: torch.Tensor | float | None = None,
                       reference: torch.Tensor | None = None, reference_ids: torch.Tensor | None = None,
                       txt_ids: torch.Tensor | None = None) -> Flux2Context:
        """Text states [B, L, joint_dim], the guidance scale (a float or [B]), reference image
        latent tokens [B or 1, R, in_channels] with their ids [R, 4] (image editing), text ids
        [L, 4] (default (0, 0, 0, l)) -> a Flux2Context, once per request."""
        text = self.context_embedder(encoder_hidden_states.to(self.dtype))  # [B, L, D]
        b, length = text.shape[:2]
        embed = self.time_guidance_embed
        if embed.guidance_embedder is not None:
            if guidance is None:
                raise ValueError("this FLUX.2 transformer embeds the guidance scale (guidance_embeds): pass guidance")
            g = torch.as_tensor(guidance, dtype=torch.float32, device=text.device).expand(b)
            guidance = embed.embed(embed.guidance_embedder, g.to(self.dtype) * 1000)
        else:
            guidance = None
        if reference is not None:
            reference = self.x_embedder(reference.to(self.dtype)).expand(b, -1, -1)  # [B, R, D]
        ids = text_ids(length, device=text.device) if txt_ids is None else txt_ids.float()
        return Flux2Context(text, guidance, ids, reference, reference_ids)

    def rope(self, txt_ids: torch.Tensor, img_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [L + S, head_dim / 2] of the joint sequence [text, image (+ reference)]."""
        return rope_tables(torch.cat([txt_ids, img_ids.to(txt_ids)]), self.config.axes_dims_rope,
                           self.config.rope_theta)

    def forward(self, latents: torch.Tensor, timestep: torch.Tensor, context: Flux2Context,
                num_blocks: int | None = None, runner: BlockRunner | None = None, seq=None) -> torch.Tensor:
        """latents [B, C, H, W] or [B, C, 1, H, W] (C = in_channels: patchified latents), timestep
        [B] in [0, 1] -> the flow prediction shaped as the latents. One token per latent element,
        row-major; the reference tokens of the context follow them and are dropped at the end.
        `seq` (a `distributed.sharding.SequenceShard` over [image, reference] tokens): sequence
        parallelism; the prediction is then right at this rank's tokens and zero elsewhere."""
        if latents.dim() == 5:
            return self.forward(latents.squeeze(2), timestep, context, num_blocks, runner, seq).unsqueeze(2)
        b, c, height, width = latents.shape
        grid = (height, width)
        if grid not in context.tables:
            ids = latent_ids(height, width, device=latents.device)
            if context.reference_ids is not None:
                ids = torch.cat([ids, context.reference_ids.to(ids)])
            context.tables[grid] = self.rope(context.txt_ids, ids)
        tokens = latents.flatten(2).transpose(1, 2)  # [B, H*W, C]
        out = self.forward_tokens(tokens, timestep, context, *context.tables[grid], num_blocks=num_blocks,
                                  runner=runner, seq=seq)
        return out.transpose(1, 2).reshape(b, -1, height, width)

    def forward_tokens(self, hidden_states: torch.Tensor, timestep: torch.Tensor, context: Flux2Context,
                       cos: torch.Tensor, sin: torch.Tensor, num_blocks: int | None = None,
                       runner: BlockRunner | None = None, seq=None) -> torch.Tensor:
        """diffusers' forward on tokens: hidden_states [B, S, in_channels] (the context's reference
        tokens are appended here), RoPE tables of [text, image, reference] -> [B, S, out_channels]
        (under `seq`: zeros at the other ranks' tokens)."""
        num_tokens = hidden_states.shape[1]
        x, c, emb, mods = self.embed(hidden_states, timestep, context)
        if seq is not None:  # this rank's [image, reference] tokens [B, s, D] and their RoPE rows
            x = seq.split(x, 1)
        blocks = self.bound_blocks(mods, *self.shard_tables(cos, sin, c.shape[1], seq), seq)[:num_blocks]
        real = x if seq is None else x[:, :seq.num_valid]  # TeaCache's signal: real tokens only
        x, c = run_blocks(blocks, (x, c), runner,
                          signal=lambda: self.transformer_blocks[0].norm1(real, *mods[0][1::-1]))
        if seq is None:
            return self.final(x[:, :num_tokens], emb)
        return seq.place(self.final(x, emb), 1)[:, :num_tokens]

    # -- the block protocol: embed -> blocks -> final --------------------------------------------
    def embed(self, hidden_states: torch.Tensor, timestep: torch.Tensor, context: Flux2Context):
        """-> (image tokens x [B, S (+ R), D], text tokens c [B, L, D], SiLU(temb) [B, D], the
        modulations (image, text, single) of this step)."""
        x = self.x_embedder(hidden_states.to(self.dtype))  # [B, S, D]
        if context.reference is not None:
            x = torch.cat([x, context.reference], dim=1)
        embed = self.time_guidance_embed
        temb = embed.embed(embed.timestep_embedder, timestep.to(x.dtype) * 1000)  # [B, D]
        if context.guidance is not None:
            temb = temb + context.guidance
        emb = F.silu(temb)
        mods = (self.double_stream_modulation_img(emb), self.double_stream_modulation_txt(emb),
                self.single_stream_modulation(emb))
        return x, context.text, emb, mods

    def bound_blocks(self, mods: tuple, cos: torch.Tensor, sin: torch.Tensor, seq=None) -> list[Block]:
        mod_img, mod_txt, mod_single = mods

        def double(block: Flux2TransformerBlock) -> Block:
            return lambda state: block(*state, mod_img, mod_txt, cos, sin, seq)

        def single(block: Flux2SingleTransformerBlock, s: torch.Tensor, length: int, image_only: bool):
            return block(s, mod_single, cos, sin, length, seq, image_only)

        return self.block_steps(double, single)

    def final(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.proj_out(self.norm_out(x, emb))  # [B, S, C_out]
