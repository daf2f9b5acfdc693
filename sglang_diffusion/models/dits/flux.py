"""FLUX.1 image DiT (dev, schnell, Kontext), on our layers and ops.

Reads diffusers' `FluxTransformer2DModel` folders: every size from config.json, weights from
safetensors through the key map, without building diffusers' class. The math is diffusers'
`transformer_flux.py`, in the same order, so outputs agree to float rounding:

    x = x_embedder(packed latents), c = context_embedder(T5 states)
    temb = TimestepMLP(t) [+ GuidanceMLP(g)] + PooledMLP(CLIP pooled);  e = SiLU(temb)
    double-stream block (image x and text c, each with its own adaLN-Zero of e):
        x', c' = AdaLN(x), AdaLN(c)
        a_c, a_x = JointAttn([c', x'])            (per-head RMS QK-norm, RoPE over (text, h, w) ids)
        x += gate * to_out(a_x);  x += gate_mlp * FF(AdaLN(x))      (and the same for c)
    single-stream block on s = [c, x]:
        s' = AdaLN(s);  s += gate * proj_out([Attn(s'), GELU(proj_mlp(s'))])
    out = proj_out(AdaLN(x; final scale, shift))

What differs from diffusers is where the work goes: the text projections, pooled and guidance
embeddings and RoPE tables depend only on the request, so `encode_context` builds them once
and every step reuses them; q, k, v (and in single-stream blocks the MLP input) come from one
GEMM (`checkpoint.load_checkpoint` fuses the weights); norm + modulation + gated residual run
as one fused op, QK-norm, RoPE and tanh-GELU as ours. The last single-stream block computes the
image rows alone (`MMDiT.block_steps`): the output reads no text, so the text's queries, MLP and
output projection there are skipped (exact; 5% of a step of the `small` preset).

Forward is laid out as embed -> double-stream blocks -> single-stream blocks -> final, the
block protocol step caching wraps.

Sequence parallelism (`seq`, a `distributed.sharding.SequenceShard` over the image tokens and
Kontext's reference tokens after them): each rank holds its shard of those and the whole text;
the RoPE tables keep the text rows and this shard's rows (`MMDiT.shard_tables`); every attention,
double- or single-stream, runs as `Attention.joint` (the shard's queries over all image keys
and the text), so the text stream comes out the same on every rank.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from sglang_diffusion.errors import ModelLoadError
from sglang_diffusion.layers.adanorm import AdaNorm
from sglang_diffusion.layers.attention import Attention
from sglang_diffusion.layers.embeddings import TimestepEmbedding, timestep_features
from sglang_diffusion.layers.joint_attention import JointAttention
from sglang_diffusion.layers.mlp import FeedForward
from sglang_diffusion.models.dits.base import DiTConfig, NativeDiT, check_rope_axes, config_values
from sglang_diffusion.models.dits.blocks import Block, BlockRunner, State, run_blocks
from sglang_diffusion.ops.activation import gelu_tanh
from sglang_diffusion.ops.qk_norm import qk_rms_norm
from sglang_diffusion.ops.rope import apply_rope, rope_cos_sin_1d

EPS = 1e-6  # every norm of the model (diffusers hard-codes it)
ROPE_THETA = 10000.0


# ---- config --------------------------------------------------------------------------------


@dataclass(frozen=True)
class FluxConfig(DiTConfig):
    """transformer/config.json, field for field (diffusers' constructor arguments)."""

    patch_size: int = 1
    in_channels: int = 64
    out_channels: int | None = None
    num_layers: int = 19
    num_single_layers: int = 38
    attention_head_dim: int = 128
    num_attention_heads: int = 24
    joint_attention_dim: int = 4096
    pooled_projection_dim: int = 768
    guidance_embeds: bool = False
    axes_dims_rope: tuple[int, ...] = (16, 56, 56)

    mlp_ratio = 4.0  # not a config.json key: FLUX.1's MLP is always 4 x wide

    @classmethod
    def from_dict(cls, raw: dict, where: str = "config.json") -> "FluxConfig":
        config = cls(**config_values(cls, raw, where, "FLUX"))
        check_rope_axes(where, "axes_dims_rope", config.axes_dims_rope, config.attention_head_dim)
        if config.patch_size != 1:
            raise ModelLoadError(f"{where}: patch_size {config.patch_size}: FLUX packs 2x2 latents itself "
                                 "and its transformer takes patch_size 1")
        return config


# ---- RoPE ----------------------------------------------------------------------------------


def rope_tables(ids: torch.Tensor, axes_dims: tuple[int, ...], theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Position ids [S, n_axes] -> cos, sin [S, head_dim / 2] fp32: axis i rotates its own
    axes_dims[i] channels by its id (diffusers' FluxPosEmbed, one angle per pair)."""
    parts = [rope_cos_sin_1d(ids[:, i].float(), dim, theta) for i, dim in enumerate(axes_dims)]
    cos, sin = zip(*parts)
    return torch.cat(cos, dim=-1).to(ids.device), torch.cat(sin, dim=-1).to(ids.device)


# ---- layers --------------------------------------------------------------------------------


class AdaLayerNormZero(nn.Module):
    """adaLN-Zero: `linear` projects SiLU(temb) to `chunks` vectors of D (shift, scale, gate, ...);
    the first two modulate a LayerNorm (no affine, eps 1e-6) of x."""

    def __init__(self, dim: int, chunks: int):
        super().__init__()
        self.chunks = chunks
        self.linear = nn.Linear(dim, chunks * dim)
        self.norm = AdaNorm(dim, EPS)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """x [B, S, D], emb = SiLU(temb) [B, D] -> (normed x, then the other chunks [B, 1, D])."""
        shift, scale, *rest = self.linear(emb).unsqueeze(1).chunk(self.chunks, dim=-1)  # [B, 1, D] each
        return (self.norm(x, scale, shift), *rest)


class AdaLayerNormContinuous(nn.Module):
    """The final norm: LayerNorm (no affine) of x, modulated by `linear`(SiLU(temb)) = (scale, shift)."""

    def __init__(self, dim: int, bias: bool = True, eps: float = EPS):
        super().__init__()
        self.linear = nn.Linear(dim, 2 * dim, bias=bias)
        self.norm = AdaNorm(dim, eps)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        scale, shift = self.linear(emb).unsqueeze(1).chunk(2, dim=-1)  # [B, 1, D] each
        return self.norm(x, scale, shift)


def _heads(t: torch.Tensor, head_dim: int) -> torch.Tensor:
    return t.unflatten(-1, (-1, head_dim))  # [B, S, H*D] -> [B, S, H, D]


def single_stream_projection(proj: nn.Linear, h: torch.Tensor, qkv_width: int, length: int,
                             image_only: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """A single-stream block's fused projection of h [B, L + S, D] = [text, image] -> (q|k|v
    [B, L + S, qkv_width], the MLP input [B, L + S or S, rest]). `image_only` (the last block,
    whose text rows nothing reads): the MLP input of the S image rows only, as a second GEMM."""
    if not image_only:
        return proj(h).split([qkv_width, proj.out_features - qkv_width], dim=-1)
    w, b = proj.weight, proj.bias
    return (F.linear(h, w[:qkv_width], None if b is None else b[:qkv_width]),
            F.linear(h[:, length:], w[qkv_width:], None if b is None else b[qkv_width:]))


def joint_single_attention(attn: Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor,
                           sin: torch.Tensor, length: int, seq=None, image_only: bool = False) -> torch.Tensor:
    """A single-stream block's attention over [text, image]: q, k (QK-normed), v [B, L + S, H, D]
    -> [B, L + S, H, D], RoPE first; `image_only`: the S image rows' out [B, S, H, D] (without
    SP their queries alone). Under `seq` the S image tokens are this rank's shard and the L
    text tokens every rank's (FLUX.1 and FLUX.2)."""
    q, k = apply_rope(q, k, cos, sin, interleaved=True)
    if seq is None:
        return attn(q[:, length:] if image_only else q, k, v)
    out, text_out = attn.joint(q[:, length:], k[:, length:], v[:, length:], q[:, :length], k[:, :length],
                               v[:, :length], seq)
    return out if image_only else torch.cat([text_out, out], dim=1)


class FluxTransformerBlock(nn.Module):
    """Double-stream block."""

    def __init__(self, config: FluxConfig):
        super().__init__()
        dim = config.inner_dim
        # 1. Joint attention, each stream with its own modulation
        self.norm1 = AdaLayerNormZero(dim, 6)
        self.norm1_context = AdaLayerNormZero(dim, 6)
        self.attn = JointAttention(dim, config.num_attention_heads, config.attention_head_dim, EPS)
        # 2. Feed-forwards
        self.norm2 = AdaNorm(dim, EPS)
        self.ff = FeedForward(dim, 4 * dim, activation="gelu_tanh")
        self.norm2_context = AdaNorm(dim, EPS)
        self.ff_context = FeedForward(dim, 4 * dim, activation="gelu_tanh")

    def forward(self, x: torch.Tensor, c: torch.Tensor, emb: torch.Tensor, cos: torch.Tensor,
                sin: torch.Tensor, seq=None) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, S, D] image, c [B, L, D] text, emb = SiLU(temb) [B, D] -> (x, c)."""
        h, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.norm1(x, emb)
        hc, c_gate_msa, c_shift_mlp, c_scale_mlp, c_gate_mlp = self.norm1_context(c, emb)
        attn_out, context_attn_out = self.attn(h, hc, cos, sin, seq=seq)
        x, h = self.norm2.residual(x, attn_out, gate_msa, scale_mlp, shift_mlp)
        x = torch.addcmul(x, gate_mlp, self.ff(h))  # x + gate_mlp * FF(h), one pass
        c, hc = self.norm2_context.residual(c, context_attn_out, c_gate_msa, c_scale_mlp, c_shift_mlp)
        c = torch.addcmul(c, c_gate_mlp, self.ff_context(hc))
        return x, c


class FluxSingleAttention(nn.Module):
    """Single-stream attention after the block's fused projection: QK-norm, RoPE, attention."""

    def __init__(self, num_heads: int, head_dim: int):
        super().__init__()
        self.norm_q = nn.RMSNorm(head_dim, eps=EPS)
        self.norm_k = nn.RMSNorm(head_dim, eps=EPS)
        self.attn = Attention(num_heads, head_dim)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor,
                sin: torch.Tensor, length: int = 0, seq=None, image_only: bool = False) -> torch.Tensor:
        """q, k, v [B, L + S, H, D] of [text, image] -> [B, L + S, H, D] (`image_only`: [B, S, H, D]).
        `seq`: the image part is this rank's shard, the `length` text tokens every rank's (see
        `JointAttention`)."""
        return joint_single_attention(self.attn, *qk_rms_norm(q, k, self.norm_q.weight, self.norm_k.weight, EPS,
                                                              across_heads=False), v, cos, sin, length, seq,
                                      image_only)


class FluxSingleTransformerBlock(nn.Module):
    """Single-stream block: attention and MLP in parallel on the joint sequence."""

    def __init__(self, config: FluxConfig, mlp_ratio: float = 4.0):
        super().__init__()
        dim, self.head_dim = config.inner_dim, config.attention_head_dim
        self.mlp_dim = int(dim * mlp_ratio)
        self.norm = AdaLayerNormZero(dim, 3)
        self.to_qkv_mlp = nn.Linear(dim, 3 * dim + self.mlp_dim)  # checkpoint: attn.to_q/k/v, proj_mlp
        self.attn = FluxSingleAttention(config.num_attention_heads, self.head_dim)
        self.proj_out = nn.Linear(dim + self.mlp_dim, dim)

    def forward(self, s: torch.Tensor, emb: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, length: int = 0,
                seq=None, image_only: bool = False) -> torch.Tensor:
        """s [B, L + S, D] = [text, image] -> the same, updated (`length`: L). `image_only` (the
        last block): the image rows [B, S, D] alone; the text rows' queries, MLP and output
        projection are skipped (their keys and values are still every image token's context)."""
        h, gate = self.norm(s, emb)
        dim = s.shape[-1]
        qkv, mlp = single_stream_projection(self.to_qkv_mlp, h, 3 * dim, length, image_only)
        q, k, v = _heads(qkv, self.head_dim).chunk(3, dim=2)  # [B, L + S, H, D] each
        out = self.attn(q, k, v, cos, sin, length, seq, image_only).flatten(2)  # [B, L + S or S, H*D]
        mlp = gelu_tanh(mlp)  # [B, L + S or S, mlp_dim], contiguous
        # proj_out of [out, mlp] as two GEMMs into one result: no concatenated copy
        y = F.linear(out, self.proj_out.weight[:, :dim], self.proj_out.bias)  # [B, L + S or S, D]
        y.view(-1, dim).addmm_(mlp.view(-1, self.mlp_dim), self.proj_out.weight[:, dim:].t())
        return torch.addcmul(s[:, length:] if image_only else s, gate, y)


class FluxTimeTextEmbedding(nn.Module):
    """temb = TimestepMLP(t) [+ GuidanceMLP(g)] + PooledMLP(pooled text), diffusers'
    CombinedTimestep(Guidance)TextProjEmbeddings; timesteps and guidance through 256
    sinusoidal features (flip_sin_to_cos, shift 0)."""

    def __init__(self, dim: int, pooled_dim: int, guidance: bool):
        super().__init__()
        self.timestep_embedder = TimestepEmbedding(256, dim)
        self.guidance_embedder = TimestepEmbedding(256, dim) if guidance else None
        self.text_embedder = TimestepEmbedding(pooled_dim, dim)  # linear_1 -> SiLU -> linear_2

    def embed(self, mlp: TimestepEmbedding, t: torch.Tensor) -> torch.Tensor:
        """t [B] (timesteps or guidance, times 1000 as the model takes them) -> [B, D]."""
        return mlp(timestep_features(t, 256).to(mlp.linear_1.weight.dtype))


# ---- model ---------------------------------------------------------------------------------


def _joined(c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """[c, x] along the sequence: the tensor they were sliced from when they are its two parts
    (one single-stream block's output feeding the next: no copy), else a concatenation."""
    base = c._base
    if (base is not None and x._base is base and base.dim() == 3 and base.shape[1] == c.shape[1] + x.shape[1]
            and c.storage_offset() == base.storage_offset()
            and x.storage_offset() == base.storage_offset() + c.shape[1] * base.stride(1)):
        return base
    return torch.cat([c, x], dim=1)


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, H/2 * W/2, 4C]: each 2x2 patch one token (diffusers' _pack_latents)."""
    b, c, h, w = latents.shape
    x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)  # [B, H/2, W/2, C, 2, 2]
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[B, H/2 * W/2, 4C] -> [B, C, H, W], the inverse of `pack_latents`."""
    b, _, channels = tokens.shape
    x = tokens.view(b, height // 2, width // 2, channels // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, channels // 4, height, width)


def image_ids(height: int, width: int, first: float = 0.0, device=None) -> torch.Tensor:
    """Position ids [height * width, 3] of a token grid, row-major: (first, row, column)
    (`first` is 0 for the generated image, 1 for a Kontext reference image)."""
    ids = torch.zeros(height, width, 3, device=device)
    ids[..., 0] = first
    ids[..., 1] = torch.arange(height, device=device)[:, None]
    ids[..., 2] = torch.arange(width, device=device)[None, :]
    return ids.reshape(height * width, 3)


@dataclass
class FluxContext:
    """What a request gives every step: the projected text, the pooled-text (and guidance)
    embeddings, the text's position ids, the Kontext input image's tokens and ids (or None),
    and (filled on first use) the RoPE tables of [text, image (+ reference)] per token grid."""

    text: torch.Tensor  # [B, L, D] context_embedder(T5 states)
    pooled: torch.Tensor  # [B, D] text_embedder(CLIP pooled)
    guidance: torch.Tensor | None  # [B, D] guidance_embedder(g * 1000); None without guidance embedding
    txt_ids: torch.Tensor  # [L, 3]
    reference: torch.Tensor | None = None  # [B, R, D] x_embedder(packed reference latents)
    reference_ids: torch.Tensor | None = None  # [R, 3]
    tables: dict = field(default_factory=dict, repr=False)  # (h, w) token grid -> (cos, sin)

    @property
    def batch_size(self) -> int:
        return self.text.shape[0]

    @property
    def reference_tokens(self) -> int:
        """Tokens the DiT appends to the image's: the Kontext input image's (R)."""
        return 0 if self.reference is None else self.reference.shape[1]

    @staticmethod
    def cat(contexts: list["FluxContext"]) -> "FluxContext":
        """Along the batch (classifier-free guidance in one forward); same token layout."""
        first = contexts[0]
        assert all(c.text.shape[1:] == first.text.shape[1:] for c in contexts), "contexts differ in text length"
        def joined(name):
            return None if getattr(first, name) is None else torch.cat([getattr(c, name) for c in contexts])

        return FluxContext(joined("text"), joined("pooled"), joined("guidance"), first.txt_ids, joined("reference"),
                           first.reference_ids, first.tables)


class MMDiT(NativeDiT):
    """What FLUX.1's and FLUX.2's DiTs share around their blocks (besides `NativeDiT`'s): CFG
    branches. Subclasses set `config_class`, `key_map` and `fused` and implement
    `forward(latents, timestep, context, num_blocks=, runner=)`."""

    def forward_branches(self, latents: torch.Tensor, timestep: torch.Tensor, contexts: list,
                         joined=None, num_blocks: int | None = None,
                         runners: list[BlockRunner] | None = None, seq=None) -> list[torch.Tensor]:
        """`forward` of the same latents and timestep under each of `contexts` (the branches of
        classifier-free guidance), one after the other, or given `joined` (the contexts' `cat`)
        as one batch. Every block mixes text and image, so nothing is shared between branches.
        `runners`: one per context, or one for the joined batch."""
        if joined is not None:
            n = len(contexts)
            out = self.forward(torch.cat([latents] * n), timestep.repeat(n), joined, num_blocks=num_blocks,
                               runner=runners[0] if runners else None, seq=seq)
            return list(out.chunk(n))
        runners = runners or [None] * len(contexts)
        return [self.forward(latents, timestep, c, num_blocks=num_blocks, runner=r, seq=seq)
                for c, r in zip(contexts, runners)]

    def block_steps(self, double: Callable[[nn.Module], Block],
                    single: Callable[[nn.Module, torch.Tensor, int, bool], torch.Tensor]) -> list[Block]:
        """The flat block sequence: `double(block)`, each double-stream block's step, then each
        single-stream block as `single(block, s, L, image_only)` ([text, image] [B, L + S, D] ->
        the same; image_only: the image rows [B, S, D]) made a step (x, c) -> (x, c). The last
        runs image-only: the final layer reads x alone, so the text it would have updated
        passes through as it came in (its queries, MLP and output projection are skipped)."""
        last = len(self.single_transformer_blocks) - 1

        def step(block: nn.Module, image_only: bool) -> Block:
            def run(state: State) -> State:
                x, c = state
                length = c.shape[1]
                s = single(block, _joined(c, x), length, image_only)
                return (s, c) if image_only else (s[:, length:], s[:, :length])
            return run

        return [*map(double, self.transformer_blocks),
                *(step(block, i == last) for i, block in enumerate(self.single_transformer_blocks))]

    @staticmethod
    def shard_tables(cos: torch.Tensor, sin: torch.Tensor, length: int, seq) -> tuple[torch.Tensor, torch.Tensor]:
        """The RoPE tables [L + S, head_dim / 2] of [text, image] -> the text rows and this
        rank's image rows (all of them without `seq`)."""
        if seq is None:
            return cos, sin
        return seq.split_after(cos, 0, length), seq.split_after(sin, 0, length)


class FluxTransformer2DModel(MMDiT):
    config_class = FluxConfig
    # Checkpoint fragments -> ours, and our fused projections -> the checkpoint modules they join.
    key_map = {".to_out.0.": ".to_out.", ".net.0.proj.": ".fc_in.", ".net.2.": ".fc_out."}
    fused = {"to_qkv": ("to_q", "to_k", "to_v"), "add_qkv": ("add_q_proj", "add_k_proj", "add_v_proj"),
             "to_qkv_mlp": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")}
    patch_size = (2, 2)  # latents [B, C, H, W] are packed 2x2 into tokens

    def __init__(self, config: FluxConfig):
        super().__init__()
        self.config = config
        dim = config.inner_dim
        # 1. Embeddings
        self.time_text_embed = FluxTimeTextEmbedding(dim, config.pooled_projection_dim, config.guidance_embeds)
        self.context_embedder = nn.Linear(config.joint_attention_dim, dim)
        self.x_embedder = nn.Linear(config.in_channels, dim)
        # 2. Double-stream, then single-stream blocks
        self.transformer_blocks = nn.ModuleList(FluxTransformerBlock(config) for _ in range(config.num_layers))
        self.single_transformer_blocks = nn.ModuleList(FluxSingleTransformerBlock(config)
                                                       for _ in range(config.num_single_layers))
        # 3. Output norm & projection
        self.norm_out = AdaLayerNormContinuous(dim)
        self.proj_out = nn.Linear(dim, config.patch_size**2 * (config.out_channels or config.in_channels))

    @torch.no_grad()
    def encode_context(self, encoder_hidden_states: torch.Tensor, pooled_projections: torch.Tensor,
                       guidance: torch.Tensor | float | None = None, txt_ids: torch.Tensor | None = None,
                       reference: torch.Tensor | None = None, reference_ids: torch.Tensor | None = None
                       ) -> FluxContext:
        """T5 states [B, L, joint_dim], CLIP pooled [B, pooled_dim], the guidance scale (a float
        or [B]; models with guidance embedding), text ids [L, 3] (zeros by default) and
        Kontext's reference tokens [1 or B, R, in_channels] (its input image's packed latents)
        with their ids [R, 3] -> a FluxContext. Depends only on the request, so it runs once,
        not per step."""
        text = self.context_embedder(encoder_hidden_states.to(self.dtype))  # [B, L, D]
        b, length = text.shape[:2]
        embed = self.time_text_embed
        pooled = embed.text_embedder(pooled_projections.to(self.dtype))  # [B, D]
        if embed.guidance_embedder is not None:
            if guidance is None:
                raise ValueError("this FLUX transformer embeds the guidance scale (guidance_embeds): pass guidance")
            g = torch.as_tensor(guidance, dtype=torch.float32, device=text.device).expand(b)
            guidance = embed.embed(embed.guidance_embedder, g.to(self.dtype) * 1000)
        else:
            guidance = None
        if txt_ids is None:
            txt_ids = text.new_zeros(length, 3, dtype=torch.float32)
        if reference is not None:
            reference = self.x_embedder(reference.to(self.dtype)).expand(b, -1, -1)  # [B, R, D]
        return FluxContext(text, pooled, guidance, txt_ids, reference, reference_ids)

    def rope(self, txt_ids: torch.Tensor, img_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [L + S, head_dim / 2] of the joint sequence [text, image]."""
        return rope_tables(torch.cat([txt_ids, img_ids.to(txt_ids)]), self.config.axes_dims_rope, ROPE_THETA)

    def forward(self, latents: torch.Tensor, timestep: torch.Tensor, context: FluxContext,
                num_blocks: int | None = None, runner: BlockRunner | None = None, seq=None) -> torch.Tensor:
        """latents [B, C, H, W] or, as image pipelines keep them, [B, C, 1, H, W] (H, W even),
        timestep [B] (in [0, 1]: the scheduler's t / 1000, as diffusers' pipelines pass it) ->
        the flow prediction, shaped as the latents. The latents are packed 2x2 into tokens here;
        the RoPE tables of their grid are built once per context. `num_blocks`: run only the
        first blocks (timing probes; the output is then meaningless). `runner`: how the block
        loop runs (step caching, see `models.dits.blocks`). `seq` (a
        `distributed.sharding.SequenceShard` over the image tokens): sequence parallelism; the
        prediction is then right at this rank's tokens' patches and zero elsewhere."""
        if latents.dim() == 5:
            return self.forward(latents.squeeze(2), timestep, context, num_blocks, runner, seq).unsqueeze(2)
        _, _, height, width = latents.shape
        grid = (height // 2, width // 2)
        if grid not in context.tables:
            ids = image_ids(*grid, device=latents.device)
            if context.reference_ids is not None:
                ids = torch.cat([ids, context.reference_ids.to(ids)])
            context.tables[grid] = self.rope(context.txt_ids, ids)
        out = self.forward_tokens(pack_latents(latents), timestep, context, *context.tables[grid],
                                  num_blocks=num_blocks, runner=runner, seq=seq)
        return unpack_latents(out, height, width)

    def forward_tokens(self, hidden_states: torch.Tensor, timestep: torch.Tensor, context: FluxContext,
                       cos: torch.Tensor, sin: torch.Tensor, num_blocks: int | None = None,
                       runner: BlockRunner | None = None, seq=None) -> torch.Tensor:
        """diffusers' forward on packed tokens: hidden_states [B, S, in_channels] (the context's
        reference tokens are appended here), RoPE tables of [text, image (+ reference)] (`rope`)
        -> [B, S, out_channels] (under `seq`: zeros at the other ranks' tokens)."""
        num_tokens = hidden_states.shape[1]
        x, c, emb = self.embed(hidden_states, timestep, context)
        if seq is not None:  # this rank's image tokens [B, s, D] and their RoPE rows
            x = seq.split(x, 1)
        blocks = self.bound_blocks(emb, *self.shard_tables(cos, sin, c.shape[1], seq), seq)[:num_blocks]
        real = x if seq is None else x[:, :seq.num_valid]  # TeaCache's signal: real tokens only
        x, c = run_blocks(blocks, (x, c), runner, signal=lambda: self.transformer_blocks[0].norm1(real, emb)[0])
        if seq is None:
            return self.final(x[:, :num_tokens], emb)
        return seq.place(self.final(x, emb), 1)[:, :num_tokens]

    # -- the block protocol: embed -> blocks -> final --------------------------------------------
    def embed(self, hidden_states: torch.Tensor, timestep: torch.Tensor, context: FluxContext
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (image tokens x [B, S (+ R), D], text tokens c [B, L, D], SiLU(temb) [B, D])."""
        x = self.x_embedder(hidden_states.to(self.dtype))  # [B, S, D]
        if context.reference is not None:
            x = torch.cat([x, context.reference], dim=1)
        embed = self.time_text_embed
        temb = embed.embed(embed.timestep_embedder, timestep.to(x.dtype) * 1000)  # [B, D]
        if context.guidance is not None:
            temb = temb + context.guidance
        temb = temb + context.pooled
        return x, context.text, F.silu(temb)

    def bound_blocks(self, emb: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, seq=None) -> list[Block]:
        """Every block as a step (x, c) -> (x, c) with this step's inputs bound: double-stream,
        then single-stream (which join [c, x] for the block and split it after)."""

        def double(block: FluxTransformerBlock) -> Block:
            return lambda state: block(*state, emb, cos, sin, seq)

        def single(block: FluxSingleTransformerBlock, s: torch.Tensor, length: int, image_only: bool) -> torch.Tensor:
            return block(s, emb, cos, sin, length, seq, image_only)

        return self.block_steps(double, single)

    def final(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.proj_out(self.norm_out(x, emb))  # [B, S, C_out]
