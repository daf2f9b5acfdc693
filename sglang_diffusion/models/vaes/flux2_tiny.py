"""FLUX.2's tiny autoencoder (`fal/FLUX.2-Tiny-AutoEncoder`, class `Flux2TinyAutoEncoder`), and the
adapter that lets both FLUX.2 pipelines (ours and diffusers' `Flux2Pipeline`) run it in place of
`AutoencoderKLFlux2`.

The checkpoint names its class through `auto_map` to a .py file in the repository. That class,
as the repository's file defines it: a diffusers `AutoencoderTiny` (TAESD) on `latent_channels / 4`
= 32 channels at 1/8 of the image, wrapped to work on the DiT's packed latent
[B, 128, H/16, W/16] (the 2x2-patchified, batch-norm-normalised latent of FLUX.2's VAE):

    encode: x -> tiny encoder [B, 32, H/8, W/8] -> conv 4x4 stride 2 -> [B, 128, H/16, W/16] = c
            -> c + residual(c)       residual = conv 3x3, GroupNorm(8), SiLU, conv 3x3
    decode: z -> transposed conv 4x4 stride 2 -> [B, 32, H/8, W/8] = d -> d + residual(d)
            -> tiny decoder -> [B, 3, H, W] in [-1, 1]

Its latent is the one the DiT denoises: no batch-norm statistics to undo, no unpatchify (SGLang's
FLUX.2 pipeline decodes it with scale 1 and no shift). `Flux2TinyAutoEncoder` below is our class
for that config.json and weight layout (`tiny_vae.*`, `extra_encoder`, `extra_decoder`,
`residual_encoder.{0,1,3}`, `residual_decoder.{0,1,3}`), so the folder loads without
--trust-remote-code; with it, the repository's own class is loaded and adapted the same way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import AutoencoderTiny
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKLOutput
from diffusers.models.autoencoders.vae import DecoderOutput, EncoderOutput, IdentityDistribution
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

PATCH = 2  # FLUX.2 packs 2x2 latent pixels into channels


def _residual(channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.GroupNorm(8, channels), nn.SiLU(),
                         nn.Conv2d(channels, channels, 3, padding=1))


class Flux2TinyAutoEncoder(ModelMixin, ConfigMixin):
    """The tiny autoencoder on FLUX.2's packed latent; config.json field for field."""

    @register_to_config
    def __init__(self, in_channels: int = 3, out_channels: int = 3, latent_channels: int = 128,
                 encoder_block_out_channels: tuple[int, ...] = (64, 64, 64, 64),
                 decoder_block_out_channels: tuple[int, ...] = (64, 64, 64, 64), act_fn: str = "silu",
                 upsampling_scaling_factor: int = 2, num_encoder_blocks: tuple[int, ...] = (1, 3, 3, 3),
                 num_decoder_blocks: tuple[int, ...] = (3, 3, 3, 1), latent_magnitude: float = 3.0,
                 latent_shift: float = 0.5, force_upcast: bool = False, scaling_factor: float = 0.13025):
        super().__init__()
        unpacked = latent_channels // PATCH**2
        self.tiny_vae = AutoencoderTiny(
            in_channels=in_channels, out_channels=out_channels, encoder_block_out_channels=encoder_block_out_channels,
            decoder_block_out_channels=decoder_block_out_channels, act_fn=act_fn, latent_channels=unpacked,
            upsampling_scaling_factor=upsampling_scaling_factor, num_encoder_blocks=num_encoder_blocks,
            num_decoder_blocks=num_decoder_blocks, latent_magnitude=latent_magnitude, latent_shift=latent_shift,
            force_upcast=force_upcast, scaling_factor=scaling_factor)
        self.extra_encoder = nn.Conv2d(unpacked, latent_channels, 4, stride=2, padding=1)
        self.extra_decoder = nn.ConvTranspose2d(latent_channels, unpacked, 4, stride=2, padding=1)
        self.residual_encoder = _residual(latent_channels)
        self.residual_decoder = _residual(unpacked)

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        c = self.extra_encoder(self.tiny_vae.encode(x).latents)  # [B, 128, H/16, W/16]
        z = c + self.residual_encoder(c)
        return EncoderOutput(latent=z) if return_dict else (z,)

    def decode(self, z: torch.Tensor, return_dict: bool = True):
        d = self.extra_decoder(z)  # [B, 32, H/8, W/8]
        image = self.tiny_vae.decode(d + self.residual_decoder(d)).sample  # [B, 3, H, W]
        return DecoderOutput(sample=image) if return_dict else (image,)


def is_packed_latent_autoencoder(vae) -> bool:
    """Whether `vae` is a FLUX.2 tiny autoencoder (ours or the repository's class): it has the
    tiny encoder / decoder layout and no batch-norm statistics."""
    config = getattr(vae, "config", {})
    return "decoder_block_out_channels" in config and getattr(vae, "bn", None) is None


class Flux2TinyAsKL(ModelMixin, ConfigMixin):
    """A FLUX.2 tiny autoencoder behind `AutoencoderKLFlux2`'s interface, the one both FLUX.2
    pipelines call: `config.block_out_channels` (its depth gives the 8x stride), `bn` with
    identity statistics (mean 0, variance 1, eps 0: the latent is already normalised), and the
    unpatchified latent [B, 32, H/8, W/8] in and out of `encode` / `decode`. The pipelines'
    2x2 patchify / unpatchify and this class's inverse ones are exact permutations, so the tiny
    autoencoder sees the packed latent untouched."""

    config_name = "config.json"

    def __init__(self, tiny):
        super().__init__()
        self.tiny = tiny
        c = tiny.config
        unpacked = c.latent_channels // PATCH**2
        self.register_to_config(block_out_channels=list(c.decoder_block_out_channels), latent_channels=unpacked,
                                batch_norm_eps=0.0, patch_size=[PATCH, PATCH], force_upcast=c.force_upcast,
                                tiny_class=type(tiny).__name__)
        self.bn = nn.BatchNorm2d(c.latent_channels, eps=0.0, affine=False, track_running_stats=True)
        self.bn.to(next(tiny.parameters()).dtype)

    @property
    def encoder(self):
        """The tiny encoder (None once dropped: vae_config.load_encoder=false)."""
        return self.tiny.tiny_vae.encoder

    @encoder.setter
    def encoder(self, value):
        self.tiny.tiny_vae.encoder = value

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        z = F.pixel_shuffle(self.tiny.encode(x).latent, PATCH)  # [B, 32, H/8, W/8]
        out = IdentityDistribution(z)
        return AutoencoderKLOutput(latent_dist=out) if return_dict else (out,)

    def decode(self, z: torch.Tensor, return_dict: bool = True):
        image = self.tiny.decode(F.pixel_unshuffle(z, PATCH)).sample  # [B, 3, H, W]
        return DecoderOutput(sample=image) if return_dict else (image,)


def as_flux2_vae(vae):
    """The VAE in the form the FLUX.2 pipelines call: a tiny autoencoder adapted, any other as it is."""
    return Flux2TinyAsKL(vae) if is_packed_latent_autoencoder(vae) else vae
