"""Wan 2.1 / 2.2 video DiT (T2V, I2V, T2V-A14B experts, TI2V-5B), on our layers and ops.

Reads diffusers' `WanTransformer3DModel` folders: every size from config.json, weights from
safetensors (sharded or not) through `KEY_MAP`, without building diffusers' class. The math is
diffusers' `transformer_wan.py`, in the same order, so outputs agree to float rounding:

    x = patchify(latents) + 3D RoPE on q/k
    per block:  x += gate_msa * SelfAttn(AdaLN(x; shift_msa, scale_msa))        (RMS QK-norm across heads)
                x += CrossAttn(LayerNorm(x), text [+ image])                     (K/V: once per request)
                x += c_gate * FFN(AdaLN(x; c_shift, c_scale))
    out = proj_out(AdaLN(x; shift, scale)) -> unpatchify

What differs from diffusers is where the work goes: cross-attention keys and values depend only
on the prompt (and image), so `encode_context` computes them once per request and the denoising
steps reuse them; RoPE tables are built once per token grid; norm + modulation + residual run
as one fused op; timestep MLPs run once per distinct timestep, not once per token (TI2V).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sglang_diffusion.attention.backends.sliding_tile_attn import SlidingTileAttentionBackend
from sglang_diffusion.attention.sliding_tile import SlidingTiles, TiledForward
from sglang_diffusion.errors import ModelLoadError
from sglang_diffusion.layers.adanorm import AdaNorm
from sglang_diffusion.layers.attention import Attention, keys_with_bias, masked_keys, query_for_key_bias
from sglang_diffusion.layers.embeddings import TextProjection, TimestepEmbedding, timestep_features
from sglang_diffusion.layers.mlp import FeedForward
from sglang_diffusion.layers.rotary import RotaryEmbedding3D
from sglang_diffusion.models.dits.blocks import Block, BlockRunner, State, run_blocks
from sglang_diffusion.ops.qk_norm import qk_rms_norm
from sglang_diffusion.ops.rope import apply_rope

logger = logging.getLogger(__name__)


# ---- config --------------------------------------------------------------------------------


@dataclass(frozen=True)
class WanConfig:
    """transformer/config.json, field for field (diffusers' constructor arguments)."""

    patch_size: tuple[int, int, int] = (1, 2, 2)
    num_attention_heads: int = 40
    attention_head_dim: int = 128
    in_channels: int = 16
    out_channels: int | None = 16
    text_dim: int = 4096
    freq_dim: int = 256
    ffn_dim: int = 13824
    num_layers: int = 40
    cross_attn_norm: bool = True
    qk_norm: str | None = "rms_norm_across_heads"  # diffusers applies RMS across heads whatever this says
    eps: float = 1e-6
    image_dim: int | None = None
    added_kv_proj_dim: int | None = None
    rope_max_seq_len: int = 1024  # diffusers' table length; ours are built per grid, so unused
    pos_embed_seq_len: int | None = None

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @classmethod
    def from_dict(cls, raw: dict, where: str = "config.json") -> "WanConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        ignored = sorted(k for k in raw if k not in known and not k.startswith("_"))
        if ignored:
            logger.warning("%s: ignoring keys the Wan transformer does not take: %s", where, ", ".join(ignored))
        values = {k: v for k, v in raw.items() if k in known}
        if "patch_size" in values:
            values["patch_size"] = tuple(values["patch_size"])
        config = cls(**values)
        if len(config.patch_size) != 3:
            raise ModelLoadError(f"{where}: patch_size must have 3 entries, got {config.patch_size}")
        return config


# ---- attention -----------------------------------------------------------------------------


class WanSelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, eps: float):
        super().__init__()
        self.num_heads, self.head_dim, self.eps = num_heads, dim // num_heads, eps
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.to_out = nn.Linear(dim, dim)
        self.norm_q = nn.RMSNorm(dim, eps=eps)
        self.norm_k = nn.RMSNorm(dim, eps=eps)
        self.attn = Attention(num_heads, self.head_dim)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, seq=None) -> torch.Tensor:
        b, s, _ = x.shape
        q = self.to_q(x).view(b, s, self.num_heads, self.head_dim)  # [B, S, H, D]
        k = self.to_k(x).view(b, s, self.num_heads, self.head_dim)
        v = self.to_v(x).view(b, s, self.num_heads, self.head_dim)
        q, k = qk_rms_norm(q, k, self.norm_q.weight, self.norm_k.weight, self.eps, across_heads=True)
        q, k = apply_rope(q, k, cos, sin, interleaved=True)
        out = self.attn(q, k, v, seq=seq)  # [B, S, H, D]; under SP over every rank's tokens
        return self.to_out(out.reshape(b, s, -1))


@dataclass
class CrossKV:
    """One block's cross-attention keys and values [B, L, H, D]: text, and image (I2V).

    `scale` is set when the text keys carry a logit bias in extra channels (`fold_padding`):
    then k, v are [B, L', H, D + 8] and attention runs with this explicit scale."""

    k: torch.Tensor
    v: torch.Tensor
    k_img: torch.Tensor | None = None
    v_img: torch.Tensor | None = None
    scale: float | None = None


def fold_padding(text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Text states [B, L, C], zero after each prompt's tokens (as the text stage pads them) ->
    (the first L' rows, log-multiplicity bias [B, L'] or None when nothing repeats).

    Every zero row embeds to the same key and value, so n of them attend exactly like one key
    whose logit is raised by log(n): a 20-token prompt padded to 512 attends over 21 keys, not
    512. Rows r_b.. L'-1 of element b stand for its L - r_b padding rows, log((L - r_b) / (L' - r_b))
    each."""
    length = text.shape[1]
    positions = torch.arange(1, length + 1, device=text.device)
    real = (text.ne(0).any(-1) * positions).amax(-1)  # [B]: tokens before the zero padding
    kept = min(int(real.max()) + 1, length)
    if kept >= length:
        return text, None
    slots = positions[:kept].sub(1)[None, :] >= real[:, None]  # [B, L']: padding slots
    per_slot = (length - real).double() / (kept - real).clamp_min(1).double()  # [B]
    bias = torch.where(slots, per_slot.log()[:, None], torch.zeros((), dtype=torch.float64, device=text.device))
    return text[:, :kept], bias.float()


class WanCrossAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, eps: float, added_kv_proj_dim: int | None):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.to_out = nn.Linear(dim, dim)
        self.norm_q = nn.RMSNorm(dim, eps=eps)
        self.norm_k = nn.RMSNorm(dim, eps=eps)
        self.add_k_proj = self.add_v_proj = self.norm_added_k = None
        if added_kv_proj_dim is not None:
            self.add_k_proj = nn.Linear(added_kv_proj_dim, dim)
            self.add_v_proj = nn.Linear(added_kv_proj_dim, dim)
            self.norm_added_k = nn.RMSNorm(dim, eps=eps)
        self.attn = Attention(num_heads, self.head_dim)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        return t.unflatten(2, (self.num_heads, self.head_dim))  # [B, L, H*D] -> [B, L, H, D]

    def project_context(self, text: torch.Tensor, image: torch.Tensor | None,
                        text_bias: torch.Tensor | None = None) -> CrossKV:
        """Keys and values of the (embedded) text [B, L, C] and image [B, L', C] tokens;
        `text_bias` [B, L]: a logit bias per text key (see `fold_padding`)."""
        kv = CrossKV(self._heads(self.norm_k(self.to_k(text))), self._heads(self.to_v(text)))
        if text_bias is not None:
            kv.scale = self.attn.scale
            kv.k, kv.v = keys_with_bias(kv.k, kv.v, text_bias, kv.scale)
        if image is not None:
            if self.add_k_proj is None:
                raise ValueError("image features given to a Wan transformer without image cross-attention "
                                 "(added_kv_proj_dim is None)")
            kv.k_img = self._heads(self.norm_added_k(self.add_k_proj(image)))
            kv.v_img = self._heads(self.add_v_proj(image))
        return kv

    def forward(self, x: torch.Tensor, kv: CrossKV) -> torch.Tensor:
        b, s, _ = x.shape
        q = self.norm_q(self.to_q(x)).view(b, s, self.num_heads, self.head_dim)  # [B, S, H, D]
        if kv.scale is None:
            out = self.attn(q, kv.k, kv.v)
        else:  # text keys with a logit bias in their extra channels
            out = self.attn(query_for_key_bias(q), kv.k, kv.v, scale=kv.scale)[..., :self.head_dim]
        if kv.k_img is not None:
            out = out + self.attn(q, kv.k_img, kv.v_img)
        return self.to_out(out.reshape(b, s, -1))


# ---- condition embeddings ------------------------------------------------------------------


class WanImageEmbedding(nn.Module):
    """CLIP image tokens -> model width: LayerNorm, GELU MLP, LayerNorm (fp32 norms)."""

    def __init__(self, in_dim: int, dim: int, pos_embed_seq_len: int | None):
        super().__init__()
        self.norm1 = nn.LayerNorm(in_dim)
        self.ff = FeedForward(in_dim, in_dim, dim, activation="gelu")
        self.norm2 = nn.LayerNorm(dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, pos_embed_seq_len, in_dim)) if pos_embed_seq_len else None

    @staticmethod
    def _fp32_norm(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.float(), norm.normalized_shape, norm.weight.float(), norm.bias.float(),
                            norm.eps).to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pos_embed is not None:  # first-last-frame models: two images' tokens side by side
            _, s, c = x.shape
            x = x.view(-1, 2 * s, c) + self.pos_embed
        return self._fp32_norm(self.norm2, self.ff(self._fp32_norm(self.norm1, x)))


class WanConditionEmbedder(nn.Module):
    def __init__(self, config: WanConfig):
        super().__init__()
        dim = config.inner_dim
        self.freq_dim = config.freq_dim
        self.time_embedder = TimestepEmbedding(config.freq_dim, dim)
        self.time_proj = nn.Linear(dim, 6 * dim)
        self.text_embedder = TextProjection(config.text_dim, dim)
        self.image_embedder = (WanImageEmbedding(config.image_dim, dim, config.pos_embed_seq_len)
                               if config.image_dim is not None else None)

    def time(self, timestep: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """timestep [B] or [B, S] -> (temb [B, D] / [B, S, D], modulation [B, 6, D] / [B, S, 6, D]).

        Per-token timesteps (TI2V) take few distinct values: the MLPs run once per value."""
        values, index = torch.unique(timestep.flatten(), return_inverse=True)  # [U], [B*S]
        features = timestep_features(values, self.freq_dim)  # [U, freq_dim] fp32
        weight_dtype = self.time_embedder.linear_1.weight.dtype
        temb = self.time_embedder(features.to(weight_dtype)).to(dtype)  # [U, D]
        mod = self.time_proj(F.silu(temb)).unflatten(1, (6, -1))  # [U, 6, D]
        shape = timestep.shape
        return temb[index].view(*shape, -1), mod[index].view(*shape, 6, -1)


# ---- block ---------------------------------------------------------------------------------


class WanTransformerBlock(nn.Module):
    def __init__(self, config: WanConfig):
        super().__init__()
        dim, heads, eps = config.inner_dim, config.num_attention_heads, config.eps
        # 1. Self-attention
        self.norm1 = AdaNorm(dim, eps)
        self.attn1 = WanSelfAttention(dim, heads, eps)
        # 2. Cross-attention
        self.norm2 = AdaNorm(dim, eps, elementwise_affine=True) if config.cross_attn_norm else None
        self.attn2 = WanCrossAttention(dim, heads, eps, config.added_kv_proj_dim)
        # 3. Feed-forward
        self.norm3 = AdaNorm(dim, eps)
        self.ffn = FeedForward(dim, config.ffn_dim, activation="gelu_tanh")
        # empty: the checkpoint fills it (a random init on the meta device imports torch._dynamo, seconds)
        self.scale_shift_table = nn.Parameter(torch.empty(1, 6, dim))

    def forward(self, x: torch.Tensor, kv: CrossKV, mod: torch.Tensor, cos: torch.Tensor,
                sin: torch.Tensor, seq=None) -> torch.Tensor:
        x, h = self.self_attention(x, mod, cos, sin, seq)
        return self.cross_attention_and_ffn(x, h, kv, mod)

    def _modulation(self, mod: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """mod [B, 6, D] (one timestep per sample) or [B, S, 6, D] (per token, TI2V) -> shift_msa,
        scale_msa, gate_msa, c_shift, c_scale, c_gate, each [B, 1, D] or [B, S, D], fp32."""
        table = self.scale_shift_table if mod.dim() == 3 else self.scale_shift_table.unsqueeze(0)
        return tuple(t.squeeze(-2) if mod.dim() == 4 else t for t in (table + mod.float()).chunk(6, dim=-2))

    def self_attention(self, x: torch.Tensor, mod: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                       seq=None) -> tuple[torch.Tensor, torch.Tensor]:
        """1. Self-attention, with its gated residual -> (x, the normed input of cross-attention).
        Depends on the video tokens and the timestep only, not on the prompt."""
        shift_msa, scale_msa, gate_msa = self._modulation(mod)[:3]
        attn_out = self.attn1(self.norm1(x, scale_msa, shift_msa), cos, sin, seq)
        if self.norm2 is not None:  # the residual add fused into cross-attention's norm
            return self.norm2.residual(x, attn_out, gate_msa)
        x = (x.float() + attn_out * gate_msa).type_as(x)
        return x, x

    def cross_attention_and_ffn(self, x: torch.Tensor, h: torch.Tensor, kv: CrossKV,
                                mod: torch.Tensor) -> torch.Tensor:
        """2. Cross-attention of `h` to the prompt, 3. the feed-forward, each with its residual."""
        c_shift, c_scale, c_gate = self._modulation(mod)[3:]
        attn_out = self.attn2(h, kv)
        x, h = self.norm3.residual(x, attn_out, None, c_scale, c_shift)
        ff_out = self.ffn(h)
        return (x.float() + ff_out.float() * c_gate).type_as(x)


# ---- model ---------------------------------------------------------------------------------


@dataclass
class WanContext:
    """What a request's conditioning gives every step: per block cross-attention K/V."""

    kv: list[CrossKV]

    @property
    def batch_size(self) -> int:
        return self.kv[0].k.shape[0]

    @property
    def reference_tokens(self) -> int:
        """Tokens the DiT appends to the latents' under sequence parallelism: none."""
        return 0

    @staticmethod
    def cat(contexts: list["WanContext"]) -> "WanContext":
        """Along the batch (classifier-free guidance in one forward). Folded text keys of
        different lengths are filled up with masked keys."""
        blocks = []
        for parts in zip(*(c.kv for c in contexts)):
            scale = next((kv.scale for kv in parts if kv.scale is not None), None)
            length = max(kv.k.shape[1] for kv in parts)
            ks, vs = [], []
            for kv in parts:
                k, v = kv.k, kv.v
                if scale is not None and kv.scale is None:  # the same keys with a zero bias
                    k, v = keys_with_bias(k, v, k.new_zeros(k.shape[:2]), scale)
                if k.shape[1] < length:
                    mk, mv = masked_keys(k, v, length - k.shape[1], scale)
                    k, v = torch.cat([k, mk], dim=1), torch.cat([v, mv], dim=1)
                ks.append(k)
                vs.append(v)
            image = parts[0].k_img is not None
            blocks.append(CrossKV(torch.cat(ks), torch.cat(vs),
                                  torch.cat([kv.k_img for kv in parts]) if image else None,
                                  torch.cat([kv.v_img for kv in parts]) if image else None, scale))
        return WanContext(blocks)


class WanTransformer3DModel(nn.Module):
    # Policies, as data: parameters kept in fp32 whatever the DiT precision (diffusers' list),
    # and keys of some checkpoints that no layer reads.
    keep_in_fp32 = ("condition_embedder.time_embedder", "scale_shift_table", "norm1", "norm2", "norm3")
    ignored_checkpoint_keys = ("norm_added_q",)
    # Cross-attend to one key per run of zero-padded text tokens (exact; see fold_padding).
    fold_text_padding = True
    # Sequence-parallel plan: tokens split along dim 1 before the blocks (per-token timestep
    # embeddings with them), RoPE tables along dim 0; self-attention spans the ranks; after
    # proj_out each rank's tokens go back in place (the loop gathers latents once, at the end).
    sp_plan = {"blocks.0": {"x": 1, "mod": 1}, "rope": {"cos": 0, "sin": 0}, "norm_out": {"temb": 1},
               "proj_out": {"place": 1}}
    # Sliding tile attention (--attention-backend sliding_tile_attn): tokens per tile, FastVideo's
    # for Wan; the backend's tile_size option overrides it.
    sliding_tile_size = (6, 8, 8)

    def __init__(self, config: WanConfig):
        super().__init__()
        self.config = config
        dim = config.inner_dim
        # 1. Patch & position embedding
        self.rope = RotaryEmbedding3D.for_head_dim(config.attention_head_dim)
        self.patch_embedding = nn.Conv3d(config.in_channels, dim, kernel_size=config.patch_size,
                                         stride=config.patch_size)
        # 2. Condition embeddings
        self.condition_embedder = WanConditionEmbedder(config)
        # 3. Transformer blocks
        self.blocks = nn.ModuleList(WanTransformerBlock(config) for _ in range(config.num_layers))
        # 4. Output norm & projection
        self.norm_out = AdaNorm(dim, config.eps)
        out_channels = config.out_channels or config.in_channels
        self.proj_out = nn.Linear(dim, out_channels * math.prod(config.patch_size))
        self.scale_shift_table = nn.Parameter(torch.empty(1, 2, dim))  # filled by the checkpoint, as above
        self.sliding_tiles: SlidingTiles | None = None  # set by set_attention_backend(sliding_tile_attn)

    @property
    def dtype(self) -> torch.dtype:
        return self.proj_out.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.proj_out.weight.device

    def set_attention_backend(self, backend) -> None:
        for module in self.modules():
            if isinstance(module, Attention):
                module.set_backend(backend)
        self.sliding_tiles = None
        if isinstance(backend, SlidingTileAttentionBackend):  # self-attention runs tiled (see _embed)
            self.sliding_tiles = SlidingTiles(backend, self.config.num_layers, self.config.num_attention_heads,
                                              backend.tile_size or self.sliding_tile_size)

    @torch.no_grad()
    def encode_context(self, encoder_hidden_states: torch.Tensor,
                       encoder_hidden_states_image: torch.Tensor | None = None) -> WanContext:
        """Text [B, L, text_dim] (and CLIP image [B, L', image_dim]) features -> every block's
        cross-attention K/V. Depends only on the request, so it runs once, not per step."""
        text, text_bias = encoder_hidden_states.to(self.dtype), None
        if self.fold_text_padding and self.blocks[0].attn2.attn.takes_key_bias(text.device, text.dtype):
            text, text_bias = fold_padding(text)
        text = self.condition_embedder.text_embedder(text)
        image = None
        if encoder_hidden_states_image is not None:
            if self.condition_embedder.image_embedder is None:
                raise ValueError("image features given to a Wan transformer without an image embedder (image_dim)")
            image = self.condition_embedder.image_embedder(encoder_hidden_states_image.to(self.dtype))
        return WanContext([block.attn2.project_context(text, image, text_bias) for block in self.blocks])

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor,
                encoder_hidden_states: torch.Tensor | None = None,
                encoder_hidden_states_image: torch.Tensor | None = None,
                context: WanContext | None = None, seq=None, num_blocks: int | None = None,
                runner: BlockRunner | None = None) -> torch.Tensor:
        """hidden_states [B, C, F, H, W], timestep [B] or [B, S] -> the flow prediction
        [B, C_out, F', H', W'] (F', H', W' the sizes rounded down to the patch). Give either the
        encoder states (diffusers' signature) or a `context` from `encode_context`.

        `seq` (a `distributed.sharding.SequenceShard` over the S tokens): sequence parallelism.
        This rank runs the blocks on its shard of the tokens only; the prediction is right at
        its tokens' patches and zero elsewhere (`seq.gather_latents` puts the ranks' parts together).
        `num_blocks`: run only the first blocks (timing probes; the output is then meaningless).
        `runner`: how the block loop runs (step caching, see `models.dits.blocks`); None: every block."""
        if context is None:
            context = self.encode_context(encoder_hidden_states, encoder_hidden_states_image)
        x, temb, mod, cos, sin, tiling = self._embed(hidden_states, timestep, seq)
        seqs = self._self_attention_sequences(tiling, seq)
        blocks = [_bound(block, kv, mod, cos, sin, s) for block, kv, s in zip(self.blocks[:num_blocks], context.kv, seqs)]
        (x,) = run_blocks(blocks, (x,), runner, signal=lambda: mod)
        return self._head(x, temb, hidden_states.shape, seq, tiling)

    def forward_branches(self, hidden_states: torch.Tensor, timestep: torch.Tensor, contexts: list[WanContext],
                         joined: WanContext | None = None, seq=None, num_blocks: int | None = None,
                         runners: list[BlockRunner] | None = None) -> list[torch.Tensor]:
        """`forward` of the same latents and timestep under each of `contexts` (the branches of
        classifier-free guidance): one prediction per context, each equal to `forward(...,
        context=c)` up to float rounding.

        The first block's self-attention sees only the latents and the timestep, so it runs
        once for all branches (when the first branch that runs its first block needs it); from
        its cross-attention on, the branches run one after the other, or, given `joined`
        (`WanContext.cat(contexts)`), as one batch. `runners`: one `BlockRunner` per context, or
        one for the joined batch; None: every block."""
        x, temb, mod, cos, sin, tiling = self._embed(hidden_states, timestep, seq)
        first, *rest = self.blocks[:num_blocks]
        seqs = self._self_attention_sequences(tiling, seq)
        shared: list[tuple[torch.Tensor, torch.Tensor]] = []

        def self_attention() -> tuple[torch.Tensor, torch.Tensor]:
            if not shared:
                shared.append(first.self_attention(x, mod, cos, sin, seqs[0]))
            return shared[0]

        n = len(contexts)
        if joined is not None:
            def joined_self_attention():
                return tuple(torch.cat([a] * n) for a in self_attention())

            xn, temb_n, mod_n = (torch.cat([a] * n) for a in (x, temb, mod))
            out = self._branch(first, rest, joined_self_attention, xn, joined, temb_n, mod_n, cos, sin, seq,
                               (n * hidden_states.shape[0], *hidden_states.shape[1:]), runners[0] if runners else None,
                               seqs, tiling)
            return list(out.chunk(n))
        runners = runners or [None] * n
        return [self._branch(first, rest, self_attention, x, c, temb, mod, cos, sin, seq, hidden_states.shape, r,
                             seqs, tiling)
                for c, r in zip(contexts, runners)]

    def _branch(self, first, rest, self_attention, x, context: WanContext, temb, mod, cos, sin, seq, shape,
                runner: BlockRunner | None, seqs: list, tiling: TiledForward | None) -> torch.Tensor:
        """One guidance branch from the embedded latents `x` [B, S, D]. Its first block's input
        is always `x`, so that block continues from `self_attention()` (x's, shared)."""

        def first_block(state: State) -> State:
            x_attn, h = self_attention()
            return (first.cross_attention_and_ffn(x_attn, h, context.kv[0], mod),)

        blocks = [first_block, *(_bound(b, kv, mod, cos, sin, s) for b, kv, s in zip(rest, context.kv[1:], seqs[1:]))]
        (x,) = run_blocks(blocks, (x,), runner, signal=lambda: mod)
        return self._head(x, temb, shape, seq, tiling)

    def _self_attention_sequences(self, tiling: TiledForward | None, seq) -> list:
        """Per block, what its self-attention spans: the SP shard (or None), or under sliding
        tile attention that layer's tiled attention (wrapping the shard)."""
        if tiling is None:
            return [seq] * len(self.blocks)
        return [tiling.layer(i, seq) for i in range(len(self.blocks))]

    def _embed(self, hidden_states: torch.Tensor, timestep: torch.Tensor, seq):
        """Patches, timestep embeddings and RoPE tables -> (x [B, S, D], temb, mod, cos, sin,
        tiling), this rank's tokens only under sequence parallelism. Under sliding tile
        attention (`tiling`, None otherwise or at a full-attention step) every per-token tensor
        is in tiled order, reordered here once for all blocks; `_head` restores the order."""
        _, _, frames, height, width = hidden_states.shape
        p_t, p_h, p_w = self.config.patch_size
        grid = (frames // p_t, height // p_h, width // p_w)
        cos, sin = self.rope(grid, hidden_states.device)  # [S, D/2] each

        x = self.patch_embedding(hidden_states.to(self.dtype))  # [B, D, F', H', W']
        x = x.flatten(2).transpose(1, 2).contiguous()  # [B, S, D]
        temb, mod = self.condition_embedder.time(timestep, x.dtype)  # [B(, S), D], [B(, S), 6, D]
        tiling = self.sliding_tiles.plan(grid, timestep) if self.sliding_tiles is not None else None
        if tiling is not None:  # tokens (and their RoPE rows, per-token timesteps) tile by tile
            layout = tiling.layout
            x, cos, sin = layout.reorder(x, 1), layout.reorder(cos, 0), layout.reorder(sin, 0)
            if temb.dim() == 3:
                temb, mod = layout.reorder(temb, 1), layout.reorder(mod, 1)
        if seq is not None:  # this rank's tokens (`sp_plan`): [B, S, ...] -> [B, s, ...]
            x, cos, sin = seq.split(x, 1), seq.split(cos, 0), seq.split(sin, 0)
            if temb.dim() == 3:
                temb, mod = seq.split(temb, 1), seq.split(mod, 1)
        return x, temb, mod, cos, sin, tiling

    def _head(self, x: torch.Tensor, temb: torch.Tensor, shape: torch.Size | tuple, seq,
              tiling: TiledForward | None = None) -> torch.Tensor:
        """5. Output norm, projection & unpatchify -> [B, C_out, F', H', W'] (`shape`: the latents').
        Tiled tokens go back to row-major order; under SP they are gathered first (a rank's tiled
        tokens are not a row-major range), so then the prediction is right at every token."""
        b, _, frames, height, width = shape
        p_t, p_h, p_w = self.config.patch_size
        grid = (frames // p_t, height // p_h, width // p_w)
        table = self.scale_shift_table if temb.dim() == 2 else self.scale_shift_table.unsqueeze(0)
        shift, scale = (table + temb.unsqueeze(-2)).chunk(2, dim=-2)  # [B, 1, D] or [B, S, 1, D]
        if temb.dim() == 3:
            shift, scale = shift.squeeze(-2), scale.squeeze(-2)
        x = self.proj_out(self.norm_out(x, scale, shift))  # [B, S, C_out * p_t * p_h * p_w]
        if seq is not None:  # [B, s, ...] -> [B, S, ...]
            x = seq.gather(x, 1) if tiling is not None else seq.place(x, 1)  # place: zeros at other ranks' tokens
        if tiling is not None:
            x = tiling.layout.restore(x, 1)
        x = x.reshape(b, *grid, p_t, p_h, p_w, -1)  # [B, F', H', W', p_t, p_h, p_w, C_out]
        x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)  # [B, C_out, F', p_t, H', p_h, W', p_w]
        return x.flatten(6, 7).flatten(4, 5).flatten(2, 3)

    # -- loading -------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, folder: str | Path, dtype: torch.dtype = torch.float32,
                        device: torch.device | str = "cpu",
                        state_edit=None) -> "WanTransformer3DModel":
        """Build from a diffusers transformer folder. `state_edit(state)` may change the
        checkpoint (diffusers keys) before it is loaded: LoRA merging does."""
        from sglang_diffusion.loader.weights import load_state_dict, read_config

        folder = Path(folder)
        config = WanConfig.from_dict(read_config(folder), where=str(folder / "config.json"))
        with torch.device("meta"):
            model = cls(config)
        state = load_state_dict(folder)
        if state_edit is not None:
            state = state_edit(state)
        model.load_checkpoint(state, dtype, device, where=str(folder))
        return model.eval().requires_grad_(False)

    def load_checkpoint(self, state: dict[str, torch.Tensor], dtype: torch.dtype,
                        device: torch.device | str = "cpu", where: str = "checkpoint") -> None:
        """Fill every parameter from diffusers-named tensors; any key left over or parameter
        left empty, or a shape mismatch, is a ModelLoadError naming it."""
        params = dict(self.named_parameters())
        mapped: dict[str, torch.Tensor] = {}
        unused = []
        for key, tensor in state.items():
            name = map_checkpoint_key(key)
            if name not in params:
                if not any(part in key for part in self.ignored_checkpoint_keys):
                    unused.append(key)
                continue
            if tuple(tensor.shape) != tuple(params[name].shape):
                raise ModelLoadError(f"{where}: {key} has shape {tuple(tensor.shape)}, the model built from "
                                     f"config.json expects {tuple(params[name].shape)}")
            keep = any(f".{p}." in f".{name}." for p in self.keep_in_fp32)
            mapped[name] = tensor.to(device=device, dtype=torch.float32 if keep else dtype)
        missing = sorted(params.keys() - mapped.keys())
        if unused or missing:
            raise ModelLoadError(f"{where} does not match its config.json: "
                                 + "; ".join(filter(None, [
                                     f"unused checkpoint keys: {', '.join(unused[:8])}" if unused else "",
                                     f"parameters without weights: {', '.join(missing[:8])}" if missing else ""])))
        self.load_state_dict(mapped, strict=True, assign=True)

    def checkpoint_slices(self, shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[str, int, int]]:
        """checkpoint key -> (our parameter, rows) for run-time LoRA (`checkpoint.checkpoint_slices`)."""
        from sglang_diffusion.models.dits.checkpoint import checkpoint_slices

        return checkpoint_slices(self, shapes, KEY_MAP)


def _bound(block: WanTransformerBlock, kv: CrossKV, mod: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
           seq) -> Block:
    """`block` as a step of the block protocol: (x,) -> (x,), with this step's inputs bound."""
    return lambda state: (block(state[0], kv, mod, cos, sin, seq),)


# ---- diffusers key map ---------------------------------------------------------------------

# diffusers key fragment -> ours. Everything else is named as diffusers names it.
KEY_MAP = {
    ".to_out.0.": ".to_out.",  # diffusers keeps a Dropout beside the output projection
    ".net.0.proj.": ".fc_in.",  # FeedForward: net = [GELU(proj), Dropout, Linear]
    ".net.2.": ".fc_out.",
}


def map_checkpoint_key(key: str) -> str:
    for theirs, ours in KEY_MAP.items():
        key = key.replace(theirs, ours)
    return key


def wan_config_of(model: Any) -> WanConfig:
    """Our config from a diffusers model's config (tests build both from one)."""
    return WanConfig.from_dict(dict(model.config))
