"""diffusers' `AutoencoderKLWan`, used as it is, with two CPU fast paths for the same math; also
`AutoencoderKLQwenImage` (Qwen-Image), the same code under other class names.

Measured on this project's CPU (one thread, the `small` preset's VAE decoding 9 frames of
384 x 512): 19.7 s as diffusers runs it, 7.6 s with oneDNN convolutions, about 4 s with both.

- Conv3d through oneDNN (`layers.conv.use_onednn_conv3d`), channels-last: PyTorch's CPU
  dispatch sends these convolutions to its im2col kernel.
- The channel RMS norm (`WanRMS_norm`, x / ||x|| over channels, times sqrt(C) * gamma): diffusers
  calls `F.normalize(x, dim=1)`, whose reduction over a non-innermost dim runs 8-12x slower on the
  CPU than summing the squared channel planes; the result differs by float rounding.
"""

from __future__ import annotations

import logging
import types

import torch
import torch.nn.functional as F

from sglang_diffusion.layers.conv import conv3d, use_onednn_conv3d
from sglang_diffusion.ops.norm import norm_modulate

logger = logging.getLogger(__name__)

_NORM_EPS = 1e-12  # F.normalize's


def channel_rms_forward(self, x: torch.Tensor) -> torch.Tensor:
    rows = x.movedim(1, -1) if self.channel_first else x
    if rows.is_contiguous() and rows.dtype in (torch.float32, torch.bfloat16, torch.float16):
        # channels innermost (channels-last activations): one fused pass over rows of C.
        # x / max(||x||, eps) * scale = x / sqrt(mean(x^2) + eps^2 / C) * scale / sqrt(C)
        # wherever ||x|| > eps (diffusers' scale is sqrt(C), so the weight is gamma).
        c = rows.shape[-1]
        weight = self.gamma.flatten().float() * (self.scale / c**0.5)
        bias = self.bias.flatten().float() if torch.is_tensor(self.bias) else None
        zeros = weight.new_zeros(c)
        out = norm_modulate(rows.reshape(1, -1, c), zeros, zeros, weight, bias, _NORM_EPS**2 / c, "rms")
        out = out.view(rows.shape)
        return out.movedim(-1, 1) if self.channel_first else out
    dim = 1 if self.channel_first else -1
    xf = x if x.dtype == torch.float32 or x.dtype == torch.float64 else x.float()
    inv_norm = xf.square().sum(dim, keepdim=True).sqrt_().clamp_min_(_NORM_EPS).reciprocal_()
    return (xf * inv_norm).to(x.dtype) * self.scale * self.gamma + self.bias


def causal_conv_forward(self, x: torch.Tensor, cache_x: torch.Tensor | None = None) -> torch.Tensor:
    """`WanCausalConv3d.forward` with the spatial zero padding done by the convolution itself
    instead of by a padded copy of every input (`F.pad`); the causal padding (past frames from
    the cache, else zeros) as diffusers does it."""
    pad_w, _, pad_h, _, pad_t, _ = self._padding
    if cache_x is not None and pad_t > 0:
        x = torch.cat([cache_x.to(x.device), x], dim=2)
        pad_t -= cache_x.shape[2]
    if pad_t > 0:
        x = F.pad(x, (0, 0, 0, 0, pad_t, 0))
    return conv3d(self, x, (0, pad_h, pad_w))


def accelerate_wan_vae(vae: torch.nn.Module) -> dict:
    """Switch a CPU-resident AutoencoderKLWan (or AutoencoderKLQwenImage) to the fast paths;
    returns what was switched."""
    from diffusers.models.autoencoders.autoencoder_kl_qwenimage import QwenImageCausalConv3d, QwenImageRMS_norm
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d, WanRMS_norm

    norms = causal = 0
    for m in vae.modules():
        if isinstance(m, (WanRMS_norm, QwenImageRMS_norm)):
            m.forward = types.MethodType(channel_rms_forward, m)
            norms += 1
        elif isinstance(m, (WanCausalConv3d, QwenImageCausalConv3d)):
            m.forward = types.MethodType(causal_conv_forward, m)
            causal += 1
    done = {"conv3d_onednn": use_onednn_conv3d(vae, channels_last=True), "rms_norm": norms, "causal_conv": causal}
    logger.info("VAE CPU fast paths: %d Conv3d layers through oneDNN (channels-last, %d padding in the "
                "convolution), %d fused channel RMS norms (same math, float rounding apart)",
                done["conv3d_onednn"], causal, norms)
    return done
