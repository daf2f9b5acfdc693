"""diffusers' `AutoencoderKLWan`, used as it is, with two CPU fast paths for the same math.

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

from sglang_diffusion.layers.conv import use_onednn_conv3d

logger = logging.getLogger(__name__)

_NORM_EPS = 1e-12  # F.normalize's


def _channel_rms_forward(self, x: torch.Tensor) -> torch.Tensor:
    dim = 1 if self.channel_first else -1
    xf = x if x.dtype == torch.float32 or x.dtype == torch.float64 else x.float()
    inv_norm = xf.square().sum(dim, keepdim=True).sqrt_().clamp_min_(_NORM_EPS).reciprocal_()
    return (xf * inv_norm).to(x.dtype) * self.scale * self.gamma + self.bias


def accelerate_wan_vae(vae: torch.nn.Module) -> dict:
    """Switch a CPU-resident AutoencoderKLWan to the fast paths; returns what was switched."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanRMS_norm

    norms = 0
    for m in vae.modules():
        if isinstance(m, WanRMS_norm):
            m.forward = types.MethodType(_channel_rms_forward, m)
            norms += 1
    done = {"conv3d_onednn": use_onednn_conv3d(vae, channels_last=True), "rms_norm": norms}
    logger.info("VAE CPU fast paths: %d Conv3d layers through oneDNN, %d channel RMS norms by sum of squares "
                "(same math, float rounding apart)", done["conv3d_onednn"], norms)
    return done
