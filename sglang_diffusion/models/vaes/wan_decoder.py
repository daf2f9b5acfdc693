"""The decoder of diffusers' `AutoencoderKLWan` (Wan 2.1's VAE, with or without Wan 2.2's pixel
patching), our own module with diffusers' parameter names: a Wan VAE folder loads into it as it
is (the encoder's weights are not read). For text-to-video, which never encodes.

Why not diffusers' class: importing diffusers costs seconds of start-up, more than a small
model's whole decode. The math is diffusers': post_quant_conv over the whole latent, then the
decoder one latent frame at a time, each causal convolution seeing the last two input frames
of the previous chunk (zeros before the first), the temporal upsamplers doubling every frame
after the first; pixels unpatched, clamped to [-1, 1]. The CPU fast paths of `wan.py` (fused
channel RMS norm, oneDNN channels-last Conv3d with the padding inside the convolution) are
this module's own forward passes.

A VAE trained frame by frame (the demo model's: every causal convolution gives its past frames
zero weight, `demo.train.make_frame_independent`) decodes each latent frame on its own: its
convolutions lose their zero taps (a third of a 3x3x3 convolution's work) and the frames after
the first decode as one batch (`per_frame`). When, besides, each temporal upsampler makes the
two frames of a pair alike (equal halves of its `time_conv`: the demo's draws each latent frame
twice), each pair is drawn once and repeated (`repeats_frames`). The same numbers, float
rounding apart.

Tiling, slicing, the Wan 2.2 residual decoder (`is_residual`) and the encoder are diffusers'
only: `supports(config, ...)` says when this one can stand in.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from sglang_diffusion.errors import ModelLoadError
from sglang_diffusion.layers.conv import use_onednn_conv3d
from sglang_diffusion.loader.weights import ConfigDict, load_state_dict, read_config
from sglang_diffusion.models.dits.checkpoint import load_checkpoint
from sglang_diffusion.models.vaes.wan import causal_conv_forward, channel_rms_forward

CACHE_FRAMES = 2  # input frames a causal 3x3x3 convolution keeps from the chunk before
FRAME_BATCH = 8  # latent frames a per-frame decoder decodes at once
_DEFAULTS = {"base_dim": 96, "decoder_base_dim": None, "z_dim": 16, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2,
             "attn_scales": [], "temperal_downsample": [False, True, True], "out_channels": 3, "patch_size": None,
             "is_residual": False, "scale_factor_temporal": 4, "scale_factor_spatial": 8}


def supports(config: dict) -> bool:
    """Whether this decoder computes what AutoencoderKLWan with `config` decodes."""
    return config.get("_class_name") == "AutoencoderKLWan" and not config.get("is_residual", False)


class DecoderOutput(NamedTuple):
    sample: torch.Tensor  # [B, 3, F, H, W]


class CausalConv3d(nn.Conv3d):
    """diffusers' WanCausalConv3d: all the temporal padding before the first frame (the cached
    frames of the chunk before, or zeros), the spatial padding on both sides."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, padding=(0, 0, 0), stride=1):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride)
        pt, ph, pw = (padding,) * 3 if isinstance(padding, int) else padding
        self._padding = (pw, pw, ph, ph, 2 * pt, 0)

    forward = causal_conv_forward


class RMSNorm(nn.Module):
    """diffusers' WanRMS_norm: x / ||x|| over channels * sqrt(C) * gamma (no bias in the VAE)."""

    def __init__(self, dim: int, images: bool):
        super().__init__()
        self.channel_first, self.scale, self.bias = True, dim**0.5, 0.0
        self.gamma = nn.Parameter(torch.ones(dim, 1, 1) if images else torch.ones(dim, 1, 1, 1))

    forward = channel_rms_forward


class FrameCache:
    """Each causal convolution's input frames from the chunk before, by module: what the next
    chunk's convolution sees before its own first frame. `keeps_past=False`: none (a per-frame
    decoder's convolutions have no past taps). `pairs_once`: the temporal upsamplers draw one
    frame of each pair (the pair's frames are alike; the caller repeats them)."""

    def __init__(self, keeps_past: bool = True, pairs_once: bool = False):
        self.keeps_past, self.pairs_once = keeps_past, pairs_once
        self.frames: dict[nn.Module, torch.Tensor | None] = {}
        self.started: set[nn.Module] = set()  # temporal upsamplers past the first chunk

    def conv(self, conv: CausalConv3d, x: torch.Tensor) -> torch.Tensor:
        if not self.keeps_past:
            return conv(x)
        before = self.frames.get(conv)
        keep = x[:, :, -CACHE_FRAMES:].clone()
        if keep.shape[2] < CACHE_FRAMES:
            head = before[:, :, -1:].to(keep.device) if before is not None else torch.zeros_like(keep)
            keep = torch.cat([head, keep], dim=2)
        out = conv(x, before)
        self.frames[conv] = keep
        return out


class ResidualBlock(nn.Module):
    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.norm1 = RMSNorm(in_dim, images=False)
        self.conv1 = CausalConv3d(in_dim, out_dim, 3, padding=1)
        self.norm2 = RMSNorm(out_dim, images=False)
        self.conv2 = CausalConv3d(out_dim, out_dim, 3, padding=1)
        self.conv_shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: torch.Tensor, cache: FrameCache) -> torch.Tensor:
        h = self.conv_shortcut(x)
        x = cache.conv(self.conv1, F.silu(self.norm1(x)))
        x = cache.conv(self.conv2, F.silu(self.norm2(x)))
        return x + h


class AttentionBlock(nn.Module):
    """One-head self-attention over each frame's pixels."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = RMSNorm(dim, images=True)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        frames = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        qkv = self.to_qkv(self.norm(frames)).reshape(b * t, 1, c * 3, h * w).permute(0, 1, 3, 2).contiguous()
        q, k, v = qkv.chunk(3, dim=-1)  # [B*T, 1, H*W, C] each
        out = F.scaled_dot_product_attention(q, k, v)
        out = self.proj(out.squeeze(1).permute(0, 2, 1).reshape(b * t, c, h, w))
        return out.view(b, t, c, h, w).permute(0, 2, 1, 3, 4) + x


class MidBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.resnets = nn.ModuleList([ResidualBlock(dim, dim), ResidualBlock(dim, dim)])
        self.attentions = nn.ModuleList([AttentionBlock(dim)])

    def forward(self, x: torch.Tensor, cache: FrameCache) -> torch.Tensor:
        return self.resnets[1](self.attentions[0](self.resnets[0](x, cache)), cache)


class _Upsample2x(nn.Module):
    """Nearest-exact 2x in fp32 (diffusers' WanUpsample), back in the input's dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x.float(), scale_factor=(2.0, 2.0), mode="nearest-exact").type_as(x)


class Upsample(nn.Module):
    """2x in space per frame (conv to half the channels); `temporal`: first 2x in time, every
    frame but the first of the video becoming two (a causal conv to twice the channels)."""

    def __init__(self, dim: int, temporal: bool):
        super().__init__()
        self.resample = nn.Sequential(_Upsample2x(), nn.Conv2d(dim, dim // 2, 3, padding=1))
        if temporal:
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))

    def forward(self, x: torch.Tensor, cache: FrameCache) -> torch.Tensor:
        b, c, t, h, w = x.shape
        if hasattr(self, "time_conv"):
            x = self._double_frames(x, cache)
            t = x.shape[2]
        x = self.resample(x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w))
        return x.view(b, t, x.shape[1], x.shape[2], x.shape[3]).permute(0, 2, 1, 3, 4)

    def _double_frames(self, x: torch.Tensor, cache: FrameCache) -> torch.Tensor:
        conv = self.time_conv
        if conv not in cache.started:  # the video's first frame stays one frame
            cache.started.add(conv)
            return x
        b, c, t, h, w = x.shape
        x = cache.conv(conv, x)  # [B, 2C, T, H, W]
        if cache.pairs_once:
            return x[:, :c]
        x = x.reshape(b, 2, c, t, h, w)
        return torch.stack((x[:, 0], x[:, 1]), 3).reshape(b, c, t * 2, h, w)


class UpBlock(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, num_res_blocks: int, upsample: str | None):
        super().__init__()
        self.resnets = nn.ModuleList([ResidualBlock(in_dim if i == 0 else out_dim, out_dim)
                                      for i in range(num_res_blocks + 1)])
        if upsample is not None:
            self.upsamplers = nn.ModuleList([Upsample(out_dim, temporal=upsample == "upsample3d")])

    def forward(self, x: torch.Tensor, cache: FrameCache) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x, cache)
        return self.upsamplers[0](x, cache) if hasattr(self, "upsamplers") else x


class Decoder(nn.Module):
    def __init__(self, config: ConfigDict):
        super().__init__()
        dim = config.decoder_base_dim or config.base_dim
        mult = list(config.dim_mult)
        temporal = list(config.temperal_downsample)[::-1]
        dims = [dim * u for u in [mult[-1], *mult[::-1]]]
        self.conv_in = CausalConv3d(config.z_dim, dims[0], 3, padding=1)
        self.mid_block = MidBlock(dims[0])
        blocks = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            last = i == len(mult) - 1
            mode = None if last else "upsample3d" if temporal[i] else "upsample2d"
            blocks.append(UpBlock(in_dim // 2 if i > 0 else in_dim, out_dim, config.num_res_blocks, mode))
        self.up_blocks = nn.ModuleList(blocks)
        self.norm_out = RMSNorm(dims[-1], images=False)
        self.conv_out = CausalConv3d(dims[-1], config.out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, cache: FrameCache) -> torch.Tensor:
        """One latent frame [B, Z, 1, h, w] -> its pixels [B, C, 1 or 4, H, W]."""
        x = self.mid_block(cache.conv(self.conv_in, x), cache)
        for block in self.up_blocks:
            x = block(x, cache)
        return cache.conv(self.conv_out, F.silu(self.norm_out(x)))


def unpatchify(x: torch.Tensor, patch: int | None) -> torch.Tensor:
    """[B, C*p*p, F, H, W] -> [B, C, F, H*p, W*p], Wan 2.2's channel order (diffusers' unpatchify)."""
    if not patch or patch == 1:
        return x
    b, cp, f, h, w = x.shape
    x = x.view(b, cp // (patch * patch), patch, patch, f, h, w).permute(0, 1, 4, 5, 3, 6, 2)
    return x.reshape(b, cp // (patch * patch), f, h * patch, w * patch)


class WanVAEDecoder(nn.Module):
    """`decode(latents [B, Z, F', H', W'], return_dict=False)[0]` -> video [B, C, F, H, W] in [-1, 1],
    with AutoencoderKLWan's `config` (latents_mean / latents_std, scale factors) for the stages."""

    use_tiling = use_slicing = False
    encoder = None
    per_frame = False  # each latent frame decoded on its own (`drop_past_taps`)
    repeats_frames = False  # and each pair of frames drawn once (`pairs_alike`)

    def __init__(self, config: dict):
        super().__init__()
        self.config = ConfigDict({**_DEFAULTS, **config})
        self.post_quant_conv = CausalConv3d(self.config.z_dim, self.config.z_dim, 1)
        self.decoder = Decoder(self.config)
        self.spatial_compression_ratio = self.config.scale_factor_spatial

    @classmethod
    def from_pretrained(cls, folder: str | Path, dtype: torch.dtype = torch.float32) -> WanVAEDecoder:
        folder = Path(folder)
        config = read_config(folder)
        if not supports(config):
            raise ModelLoadError(f"{folder}: not an AutoencoderKLWan config the native decoder runs")
        with torch.device("meta"):
            model = cls(config)
        state = {k: v for k, v in load_state_dict(folder).items() if k.startswith(("decoder.", "post_quant_conv."))}
        load_checkpoint(model, state, dtype=dtype, where=str(folder))
        model.eval().requires_grad_(False)
        model.per_frame = model.drop_past_taps()
        model.repeats_frames = model.per_frame and model.pairs_alike()
        return model

    def _temporal_upsamplers(self) -> list[CausalConv3d]:
        return [m.time_conv for m in self.modules() if isinstance(m, Upsample) and hasattr(m, "time_conv")]

    def pairs_alike(self) -> bool:
        """Whether every temporal upsampler draws the two frames of a pair alike: its
        `time_conv`'s output halves (the pair's frames) have equal weights and biases."""
        convs = self._temporal_upsamplers()
        return bool(convs) and all(torch.equal(*conv.weight.chunk(2)) and torch.equal(*conv.bias.chunk(2))
                                   for conv in convs)

    def drop_past_taps(self) -> bool:
        """When every causal convolution gives its past frames zero weight, cut those taps (the
        temporal kernel becomes 1); returns whether it did."""
        convs = [m for m in self.modules() if isinstance(m, CausalConv3d) and m.kernel_size[0] > 1]
        if not convs or any(conv.weight[:, :, :-1].any() for conv in convs):
            return False
        for conv in convs:
            conv.weight = nn.Parameter(conv.weight[:, :, -1:].contiguous(), requires_grad=False)
            conv.kernel_size = (1, *conv.kernel_size[1:])
            conv._padding = (*conv._padding[:4], 0, 0)
        return True

    @property
    def dtype(self) -> torch.dtype:
        """The dtype it decodes in, as diffusers' models report it (`/model_info` shows it)."""
        return self.post_quant_conv.weight.dtype

    def use_cpu_fast_paths(self) -> int:
        """oneDNN channels-last Conv3d (wan.py's fast paths are this module's forwards already);
        returns how many convolutions were routed."""
        return use_onednn_conv3d(self, channels_last=True)

    @torch.no_grad()
    def decode(self, z: torch.Tensor, return_dict: bool = True):
        x = self.post_quant_conv(z)
        if self.per_frame:
            frames = self._decode_frames_apart(x)
        else:
            cache = FrameCache()
            frames = [self.decoder(x[:, :, i:i + 1], cache) for i in range(x.shape[2])]
        video = unpatchify(torch.cat(frames, dim=2), self.config.patch_size).clamp(-1.0, 1.0)
        return DecoderOutput(video)

    def _decode_frames_apart(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The first latent frame as the sequence starts it (one frame out), the others in
        batches of FRAME_BATCH as frames past the first (the temporal upsamplers multiply them)."""
        b, _, t, h, w = x.shape
        frames = [self.decoder(x[:, :, :1], FrameCache(keeps_past=False))]
        if t > 1:
            upsamplers = self._temporal_upsamplers()
            later = FrameCache(keeps_past=False, pairs_once=self.repeats_frames)
            later.started.update(upsamplers)
            rest = x[:, :, 1:].transpose(1, 2).reshape(b * (t - 1), -1, 1, h, w)
            out = torch.cat([self.decoder(chunk, later) for chunk in rest.split(FRAME_BATCH)])  # [B*(T-1), C, r, H', W']
            if self.repeats_frames:
                out = out.repeat_interleave(2 ** len(upsamplers), dim=2)
            frames.append(out.unflatten(0, (b, t - 1)).permute(0, 2, 1, 3, 4, 5).flatten(2, 3))
        return frames
