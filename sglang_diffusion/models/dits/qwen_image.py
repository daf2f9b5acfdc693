"""Qwen-Image MMDiT (Qwen-Image, Qwen-Image-Edit, Qwen-Image-Edit-Plus), on our layers and ops.

Reads diffusers' `QwenImageTransformer2DModel` folders: every size from config.json, weights
through `key_map` and the fused q/k/v projections (`models.dits.checkpoint`), without building
diffusers' class. The math is diffusers'
`transformer_qwenimage.py`, in the same order, so outputs agree to float rounding:

    x = img_in(pack 2x2(latents) [, reference latents])      txt = txt_in(RMSNorm(text states))
    per block (two streams, one joint attention over [txt, x], RMS QK-norm per head, RoPE):
        x   += gate1   * Attn_x(AdaLN(x; shift1, scale1))     txt += t_gate1 * Attn_txt(...)
        x   += gate2   * MLP_x(AdaLN(x; shift2, scale2))      txt += t_gate2 * MLP_txt(...)
    out = proj_out(AdaLN(x; shift, scale)) -> unpack 2x2 (the generated image's tokens only)

RoPE (`QwenRotary`): each image token rotates by its (frame, row, column), rows and columns
centred on the image (positions -h/2 .. h/2 - 1); image i of an edit request sits at frame i.
Text tokens continue on the diagonal: token j is at (m + j, m + j, m + j), m the largest
half-size of any image, so text never collides with an image position.

What differs from diffusers is where the work goes: the text projection (and, for edits, the
reference latents' projection) runs once per request (`encode_context`), RoPE tables once per
shape, the timestep's SiLU once per step, and norm + modulation + gated residual run as one
fused op. Latents come in and go out unpacked, [B, C, 1, H, W] (the VAE's layout; `patch_size`
reads (1, p, p)), so the denoising loop treats them as it treats Wan's. Under sequence
parallelism (`seq`) the [image, reference] tokens are split over the ranks and the text stays
on every rank (`JointAttention` with `seq`; padded text still masked by its key bias).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sglang_diffusion.errors import ModelLoadError
from sglang_diffusion.layers.adanorm import AdaNorm
from sglang_diffusion.layers.attention import MASKED_LOGIT, Attention
from sglang_diffusion.layers.embeddings import TimestepEmbedding, timestep_features
from sglang_diffusion.layers.joint_attention import JointAttention
from sglang_diffusion.layers.mlp import FeedForward
from sglang_diffusion.models.dits.blocks import Block, BlockRunner, run_blocks

logger = logging.getLogger(__name__)

EPS = 1e-6  # every norm of the model


# ---- config --------------------------------------------------------------------------------


@dataclass(frozen=True)
class QwenImageConfig:
    """transformer/config.json, field for field (diffusers' constructor arguments); `patch_size`
    is kept as the (frames, height, width) patch over unpacked latents."""

    patch_size: tuple[int, int, int] = (1, 2, 2)
    in_channels: int = 64
    out_channels: int | None = 16
    num_layers: int = 60
    attention_head_dim: int = 128
    num_attention_heads: int = 24
    joint_attention_dim: int = 3584
    guidance_embeds: bool = False
    axes_dims_rope: tuple[int, int, int] = (16, 56, 56)
    zero_cond_t: bool = False
    use_additional_t_cond: bool = False
    use_layer3d_rope: bool = False

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def ffn_dim(self) -> int:
        return 4 * self.inner_dim

    @property
    def latent_channels(self) -> int:
        return self.in_channels // (self.patch_size[1] * self.patch_size[2])

    @classmethod
    def from_dict(cls, raw: dict, where: str = "config.json") -> "QwenImageConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        ignored = sorted(k for k in raw if k not in known and not k.startswith("_"))
        if ignored:
            logger.warning("%s: ignoring keys the Qwen-Image transformer does not take: %s", where,
                           ", ".join(ignored))
        values = {k: v for k, v in raw.items() if k in known}
        if "patch_size" in values:
            p = values["patch_size"]
            values["patch_size"] = (1, p, p) if isinstance(p, int) else tuple(p)
        if "axes_dims_rope" in values:
            values["axes_dims_rope"] = tuple(values["axes_dims_rope"])
        config = cls(**values)
        unsupported = [k for k in ("guidance_embeds", "use_additional_t_cond", "use_layer3d_rope") if getattr(config, k)]
        if unsupported:
            raise ModelLoadError(f"{where}: {', '.join(unsupported)} (Qwen-Image-Layered, guidance-distilled "
                                 "variants) are not supported by the native Qwen-Image DiT; use --backend diffusers")
        if sum(config.axes_dims_rope) != config.attention_head_dim:
            raise ModelLoadError(f"{where}: axes_dims_rope {config.axes_dims_rope} must add up to "
                                 f"attention_head_dim {config.attention_head_dim}")
        return config


# ---- rotary positions ----------------------------------------------------------------------


def _angles(positions: torch.Tensor, dim: int, theta: float) -> torch.Tensor:
    """positions [N] int64 -> angles [N, dim/2] fp32, computed as diffusers computes them."""
    inv_freq = 1.0 / torch.pow(theta, torch.arange(0, dim, 2).to(torch.float32).div(dim))
    return torch.outer(positions, inv_freq)


def _centred(n: int) -> torch.Tensor:
    return torch.arange(-(n - n // 2), n // 2)  # [n]: -ceil(n/2) .. floor(n/2) - 1


@dataclass(frozen=True)
class RopeTables:
    """cos / sin [L + S_img, D/2] fp32 of the joint sequence [text, image tokens]."""

    cos: torch.Tensor
    sin: torch.Tensor


class QwenRotary:
    """Qwen-Image's RoPE tables (`QwenEmbedRope` with scale_rope), per (image grids, text
    length, device), kept for the shapes seen last so a request builds them once."""

    def __init__(self, axes_dims: tuple[int, int, int], theta: float = 10000.0, max_cached: int = 8):
        self.axes_dims, self.theta, self.max_cached = tuple(axes_dims), theta, max_cached
        self._tables: dict[tuple, RopeTables] = {}

    def _image(self, index: int, grid: tuple[int, int, int]) -> torch.Tensor:
        frames, height, width = grid
        f = _angles(torch.arange(index, index + frames), self.axes_dims[0], self.theta)
        h = _angles(_centred(height), self.axes_dims[1], self.theta)
        w = _angles(_centred(width), self.axes_dims[2], self.theta)
        parts = (f[:, None, None].expand(frames, height, width, -1), h[None, :, None].expand(frames, height, width, -1),
                 w[None, None, :].expand(frames, height, width, -1))
        return torch.cat(parts, dim=-1).reshape(frames * height * width, -1)  # [F*H*W, D/2]

    def __call__(self, grids: tuple[tuple[int, int, int], ...], text_len: int, device: torch.device) -> RopeTables:
        """`grids`: the (frames, rows, columns) token grid of each image, generated image first."""
        key = (grids, text_len, torch.device(device))
        tables = self._tables.get(key)
        if tables is None:
            if len(self._tables) >= self.max_cached:
                self._tables.pop(next(iter(self._tables)))
            start = max(max(h // 2, w // 2) for _, h, w in grids)
            text_pos = torch.arange(start, start + text_len)
            text = torch.cat([_angles(text_pos, d, self.theta) for d in self.axes_dims], dim=-1)  # [L, D/2]
            angles = torch.cat([text, *(self._image(i, g) for i, g in enumerate(grids))])  # [L + S_img, D/2]
            tables = self._tables[key] = RopeTables(angles.cos().to(device), angles.sin().to(device))
        return tables


# ---- block ---------------------------------------------------------------------------------


def _chunks(mod: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """mod [B, 6D] -> shift1, scale1, gate1, shift2, scale2, gate2, each [B, 1, D]."""
    return tuple(t.unsqueeze(1) for t in mod.chunk(6, dim=-1))


class QwenImageTransformerBlock(nn.Module):
    def __init__(self, config: QwenImageConfig):
        super().__init__()
        dim = config.inner_dim
        # 1. Modulation of each stream from the timestep
        self.img_mod = nn.Linear(dim, 6 * dim)
        self.txt_mod = nn.Linear(dim, 6 * dim)
        # 2. Joint attention
        self.img_norm1, self.txt_norm1 = AdaNorm(dim, EPS), AdaNorm(dim, EPS)
        self.attn = JointAttention(dim, config.num_attention_heads, config.attention_head_dim, EPS)
        # 3. Feed-forward of each stream
        self.img_norm2, self.txt_norm2 = AdaNorm(dim, EPS), AdaNorm(dim, EPS)
        self.img_mlp = FeedForward(dim, 4 * dim, activation="gelu_tanh")
        self.txt_mlp = FeedForward(dim, 4 * dim, activation="gelu_tanh")

    def forward(self, x: torch.Tensor, txt: torch.Tensor, silu_temb: torch.Tensor, rope: RopeTables,
                text_bias: torch.Tensor | None = None, zero_cond: tuple[torch.Tensor, torch.Tensor] | None = None,
                seq=None) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, S, D], txt [B, L, D], silu_temb [B, D] (SiLU of the timestep embedding) ->
        the new (x, txt). `zero_cond` (zero_cond_t models, Qwen-Image-Edit-2511): (a mask
        [1, S, 1], true at the reference tokens, SiLU of the t = 0 embedding): those tokens are
        modulated as clean. `seq`: x is this rank's shard of the image tokens (see `JointAttention`)."""
        mods = _chunks(self.img_mod(silu_temb))
        if zero_cond is not None:
            references, silu_clean = zero_cond
            mods = tuple(torch.where(references, c, m)  # [B, S, D]
                         for m, c in zip(mods, _chunks(self.img_mod(silu_clean))))
        shift1, scale1, gate1, shift2, scale2, gate2 = mods
        t_shift1, t_scale1, t_gate1, t_shift2, t_scale2, t_gate2 = _chunks(self.txt_mod(silu_temb))
        # 2. Joint attention, each stream with its gated residual fused into the next norm
        img_attn, txt_attn = self.attn(self.img_norm1(x, scale1, shift1), self.txt_norm1(txt, t_scale1, t_shift1),
                                       rope.cos, rope.sin, text_bias, seq)
        x, h = self.img_norm2.residual(x, img_attn, gate1, scale2, shift2)
        txt, t_h = self.txt_norm2.residual(txt, txt_attn, t_gate1, t_scale2, t_shift2)
        # 3. Feed-forward
        x = (x.float() + gate2 * self.img_mlp(h).float()).type_as(x)
        txt = (txt.float() + t_gate2 * self.txt_mlp(t_h).float()).type_as(txt)
        return x, txt


# ---- model ---------------------------------------------------------------------------------


@dataclass
class QwenImageContext:
    """What a request's conditioning gives every step: the embedded text stream [B, L, D]
    (txt_in(RMSNorm(states))), a logit bias [B, L] masking padded text (or None), and for edits
    the embedded reference-image tokens [B, R, D] with their token grids."""

    text: torch.Tensor
    text_bias: torch.Tensor | None = None
    references: torch.Tensor | None = None
    reference_grids: tuple[tuple[int, int, int], ...] = ()

    @property
    def batch_size(self) -> int:
        return self.text.shape[0]

    @property
    def reference_tokens(self) -> int:
        """Tokens the DiT appends to the generated image's: the reference images' (R)."""
        return 0 if self.references is None else self.references.shape[1]

    @staticmethod
    def cat(contexts: list["QwenImageContext"]) -> "QwenImageContext":
        """Along the batch (classifier-free guidance in one forward): shorter texts are padded
        with zeros and masked out through the bias."""
        length = max(c.text.shape[1] for c in contexts)
        texts, biases = [], []
        for c in contexts:
            b, n, _ = c.text.shape
            bias = c.text_bias if c.text_bias is not None else c.text.new_zeros(b, n, dtype=torch.float32)
            texts.append(F.pad(c.text, (0, 0, 0, length - n)))
            biases.append(F.pad(bias, (0, length - n), value=MASKED_LOGIT))
        bias = torch.cat(biases)
        refs = [c.references for c in contexts]
        return QwenImageContext(torch.cat(texts), bias if bool(bias.ne(0).any()) else None,
                                torch.cat(refs) if refs[0] is not None else None, contexts[0].reference_grids)


def pack_latents(latents: torch.Tensor, patch: int) -> torch.Tensor:
    """[B, C, 1, H, W] -> tokens [B, (H/p)(W/p), C p p], channels (C, row, column) as diffusers packs."""
    b, c, frames, height, width = latents.shape
    assert frames == 1, f"Qwen-Image latents have one frame, got {frames}"
    x = latents.view(b, c, height // patch, patch, width // patch, patch)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, (height // patch) * (width // patch), c * patch * patch)


def unpack_latents(tokens: torch.Tensor, grid: tuple[int, int], patch: int) -> torch.Tensor:
    """tokens [B, h*w, C p p] of a (h, w) token grid -> [B, C, 1, h p, w p]."""
    b = tokens.shape[0]
    h, w = grid
    x = tokens.reshape(b, h, w, -1, patch, patch).permute(0, 3, 1, 4, 2, 5)  # [B, C, h, p, w, p]
    return x.reshape(b, -1, 1, h * patch, w * patch)


class QwenImageTransformer2DModel(nn.Module):
    # Policies, as data: parameters kept in fp32 whatever the DiT precision.
    keep_in_fp32 = ("time_text_embed",)

    def __init__(self, config: QwenImageConfig):
        super().__init__()
        self.config = config
        dim = config.inner_dim
        # 1. Positions, timestep and input projections
        self.rope = QwenRotary(config.axes_dims_rope)
        self.time_text_embed = nn.Module()
        self.time_text_embed.timestep_embedder = TimestepEmbedding(256, dim)
        self.txt_norm = nn.RMSNorm(config.joint_attention_dim, eps=EPS)
        self.img_in = nn.Linear(config.in_channels, dim)
        self.txt_in = nn.Linear(config.joint_attention_dim, dim)
        # 2. Dual-stream blocks
        self.transformer_blocks = nn.ModuleList(QwenImageTransformerBlock(config) for _ in range(config.num_layers))
        # 3. Output norm & projection
        self.norm_out = AdaNorm(dim, EPS)
        self.norm_out_linear = nn.Linear(dim, 2 * dim)
        patch = config.patch_size[1] * config.patch_size[2]
        self.proj_out = nn.Linear(dim, patch * (config.out_channels or config.in_channels))

    @property
    def dtype(self) -> torch.dtype:
        return self.proj_out.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.proj_out.weight.device

    @property
    def blocks(self) -> nn.ModuleList:
        return self.transformer_blocks

    def set_attention_backend(self, backend) -> None:
        for module in self.modules():
            if isinstance(module, Attention):
                module.set_backend(backend)

    @torch.no_grad()
    def encode_context(self, encoder_hidden_states: torch.Tensor,
                       reference_latents: list[torch.Tensor] | None = None,
                       encoder_hidden_states_mask: torch.Tensor | None = None) -> QwenImageContext:
        """Text states [B, L, joint_attention_dim] (with their mask [B, L], 1 on real tokens,
        or None) and, for edits, each reference image's latents [B, C, 1, H, W] -> the
        request's context. Depends only on the request, so it runs once, not per step."""
        text = self.txt_in(self.txt_norm(encoder_hidden_states.to(self.dtype)))  # [B, L, D]
        bias = None
        if encoder_hidden_states_mask is not None and not bool(encoder_hidden_states_mask.all()):
            real = encoder_hidden_states_mask.to(device=text.device, dtype=torch.bool)
            bias = torch.where(real, 0.0, MASKED_LOGIT).float()
        if not reference_latents:
            return QwenImageContext(text, bias)
        p = self.config.patch_size[1]
        grids = tuple((1, r.shape[-2] // p, r.shape[-1] // p) for r in reference_latents)
        refs = torch.cat([self.img_in(pack_latents(r.to(self.dtype), p)) for r in reference_latents], dim=1)
        return QwenImageContext(text, bias, refs, grids)

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor,
                encoder_hidden_states: torch.Tensor | None = None,
                encoder_hidden_states_mask: torch.Tensor | None = None,
                context: QwenImageContext | None = None, num_blocks: int | None = None,
                runner: BlockRunner | None = None, seq=None) -> torch.Tensor:
        """hidden_states [B, C, 1, H, W] (H, W multiples of the patch), timestep [B] (the
        scheduler's, 0..1000, as for every native DiT; diffusers' Qwen-Image takes it / 1000)
        -> the flow prediction [B, C_out, 1, H, W]. Give either the text
        states (diffusers' signature) or a `context` from `encode_context`.
        `num_blocks`: run only the first blocks (timing probes; the output is then meaningless).
        `runner`: how the block loop runs (step caching, see `models.dits.blocks`); None: every block.
        `seq` (a `distributed.sharding.SequenceShard` over [image, reference] tokens): sequence
        parallelism; the prediction is then right at this rank's tokens' patches and zero elsewhere."""
        if context is None:
            context = self.encode_context(encoder_hidden_states, None, encoder_hidden_states_mask)
        x, silu_temb, grid = self._embed(hidden_states, timestep)
        return self._run(x, silu_temb, grid, context, num_blocks, runner, seq)

    def forward_branches(self, hidden_states: torch.Tensor, timestep: torch.Tensor,
                         contexts: list[QwenImageContext], joined: QwenImageContext | None = None,
                         num_blocks: int | None = None, runners: list[BlockRunner] | None = None,
                         seq=None) -> list[torch.Tensor]:
        """`forward` of the same latents and timestep under each of `contexts` (the branches of
        true CFG): the image projection and timestep embedding run once; the blocks run per
        branch, or, given `joined` (`QwenImageContext.cat(contexts)`), as one batch.
        `runners`: one `BlockRunner` per context, or one for the joined batch; None: every block."""
        x, silu_temb, grid = self._embed(hidden_states, timestep)
        if joined is None:
            runners = runners or [None] * len(contexts)
            return [self._run(x, silu_temb, grid, c, num_blocks, r, seq) for c, r in zip(contexts, runners)]
        n = len(contexts)
        x, silu_temb = torch.cat([x] * n), torch.cat([silu_temb] * n)
        return list(self._run(x, silu_temb, grid, joined, num_blocks, runners[0] if runners else None, seq).chunk(n))

    def _embed(self, hidden_states: torch.Tensor, timestep: torch.Tensor):
        """1. Image tokens, timestep embedding -> (x [B, S, D], SiLU(temb) [B, D], temb, token grid)."""
        p = self.config.patch_size[1]
        grid = (1, hidden_states.shape[-2] // p, hidden_states.shape[-1] // p)
        x = self.img_in(pack_latents(hidden_states.to(self.dtype), p))  # [B, S, D]
        return x, self._silu_temb(timestep.to(x.dtype) / 1000), grid

    def _silu_temb(self, sigma: torch.Tensor) -> torch.Tensor:
        """sigma [B] (diffusers' pipeline divides t by 1000, its embedding multiplies back) ->
        SiLU(temb) [B, D]: every consumer of temb (the modulation linears) takes its SiLU."""
        features = timestep_features(sigma, 256, flip_sin_to_cos=True, scale=1000.0)  # [B, 256]
        embedder = self.time_text_embed.timestep_embedder
        return F.silu(embedder(features.to(embedder.linear_1.weight.dtype)).to(self.dtype))

    def _run(self, x: torch.Tensor, silu_temb: torch.Tensor, grid: tuple[int, int, int], context: QwenImageContext,
             num_blocks: int | None, runner: BlockRunner | None, seq=None) -> torch.Tensor:
        """2. The blocks over [generated image, reference images] and the text, 3. the head.
        Under `seq` the blocks run on this rank's shard of [generated image, reference images]."""
        tokens = x.shape[1]
        if context.references is not None:
            x = torch.cat([x, context.references], dim=1)  # [B, S + R, D]
        length = context.text.shape[1]
        rope = self.rope((grid, *context.reference_grids), length, x.device)
        zero_cond = None
        if self.config.zero_cond_t and context.references is not None:
            references = (torch.arange(x.shape[1], device=x.device) >= tokens)[None, :, None]  # [1, S + R, 1]
            zero_cond = (references if seq is None else seq.split(references, 1),
                         self._silu_temb(silu_temb.new_zeros(silu_temb.shape[0])))
        if seq is not None:  # this rank's tokens [B, s, D]; RoPE rows: the text's, then this shard's
            x = seq.split(x, 1)
            rope = RopeTables(seq.split_after(rope.cos, 0, length), seq.split_after(rope.sin, 0, length))
        blocks = [_bound(b, silu_temb, rope, context.text_bias, zero_cond, seq)
                  for b in self.transformer_blocks[:num_blocks]]
        first = self.transformer_blocks[0]
        real = x if seq is None else x[:, :seq.num_valid]

        def signal() -> torch.Tensor:  # TeaCache's indicator: block 0's modulated image input (real tokens)
            shift1, scale1 = _chunks(first.img_mod(silu_temb))[:2]
            return first.img_norm1(real, scale1, shift1)

        x, _ = run_blocks(blocks, (x, context.text), runner, signal=signal)
        return self._head(x, silu_temb, grid, tokens, seq)

    def _head(self, x: torch.Tensor, silu_temb: torch.Tensor, grid: tuple[int, int, int], tokens: int,
              seq=None) -> torch.Tensor:
        """3. Output norm (AdaLayerNormContinuous: scale first), projection, unpack of the
        generated image's `tokens` -> [B, C_out, 1, H, W] (under `seq`: zeros at the other ranks' tokens)."""
        if seq is None:
            x = x[:, :tokens]
        scale, shift = self.norm_out_linear(silu_temb).unsqueeze(1).chunk(2, dim=-1)  # [B, 1, D] each
        x = self.proj_out(self.norm_out(x, scale, shift))  # [B, S, C_out p p]
        if seq is not None:
            x = seq.place(x, 1)[:, :tokens]
        return unpack_latents(x, grid[1:], self.config.patch_size[1])

    # -- loading -------------------------------------------------------------------------------
    # Checkpoint fragments -> ours, and our fused projections -> the checkpoint modules they join.
    key_map = {
        ".to_out.0.": ".to_out.",  # diffusers keeps a Dropout beside the output projection
        ".net.0.proj.": ".fc_in.",  # FeedForward: net = [GELU(proj), Dropout, Linear]
        ".net.2.": ".fc_out.",
        "_mod.1.": "_mod.",  # img_mod / txt_mod = Sequential(SiLU, Linear): the SiLU runs once per step
        "norm_out.linear.": "norm_out_linear.",  # AdaLayerNormContinuous's projection
    }
    fused = {"to_qkv": ("to_q", "to_k", "to_v"), "add_qkv": ("add_q_proj", "add_k_proj", "add_v_proj")}

    @classmethod
    def from_pretrained(cls, folder: str | Path, dtype: torch.dtype = torch.float32,
                        device: torch.device | str = "cpu", state_edit=None) -> "QwenImageTransformer2DModel":
        """Build from a diffusers transformer folder. `state_edit(state)` may change the
        checkpoint (diffusers keys) before it is loaded: LoRA merging does."""
        from sglang_diffusion.models.dits.checkpoint import build_from_folder

        return build_from_folder(cls, QwenImageConfig.from_dict, folder, dtype, device, state_edit)

    def load_checkpoint(self, state: dict[str, torch.Tensor], dtype: torch.dtype,
                        device: torch.device | str = "cpu", where: str = "checkpoint") -> None:
        """Fill every parameter from diffusers-named tensors (a ModelLoadError names any key
        left over, parameter left empty or shape mismatch)."""
        from sglang_diffusion.models.dits.checkpoint import load_checkpoint

        load_checkpoint(self, state, dtype=dtype, device=device, key_map=self.key_map, fused=self.fused,
                        keep_in_fp32=self.keep_in_fp32, where=where)

    def checkpoint_slices(self, shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[str, int, int]]:
        """checkpoint key -> (our parameter, rows) for run-time LoRA (`checkpoint.checkpoint_slices`)."""
        from sglang_diffusion.models.dits.checkpoint import checkpoint_slices

        return checkpoint_slices(self, shapes, self.key_map, self.fused)


def _bound(block: QwenImageTransformerBlock, silu_temb: torch.Tensor, rope: RopeTables,
           text_bias: torch.Tensor | None, zero_cond, seq) -> Block:
    """`block` as a step of the block protocol: (x, txt) -> (x, txt), this step's inputs bound."""
    return lambda state: block(state[0], state[1], silu_temb, rope, text_bias, zero_cond, seq)


def qwen_image_config_of(model: Any) -> QwenImageConfig:
    """Our config from a diffusers model's config (tests build both from one)."""
    return QwenImageConfig.from_dict(dict(model.config))
