"""Qwen-Image-Edit (and Edit-Plus) input images: sizes and reference latents, as diffusers'
`QwenImageEditPipeline` / `QwenImageEditPlusPipeline` make them.

Every input image is resized to a pixel area at its own aspect ratio (sides rounded to 32,
`dimensions`): 1024 x 1024 for the VAE (the reference latents the DiT reads beside the noise)
and, for the VL prompt encoder, 1024 x 1024 (Edit) or 384 x 384 (Edit-Plus). Without a
requested size the output takes the 1024 x 1024-area size of the first (Edit) or last
(Edit-Plus) input image.
"""

from __future__ import annotations

import math

import torch

from sglang_diffusion.pipelines.stages.base import GenerationState, Stage

VAE_AREA = 1024 * 1024
EDIT_PLUS_CONDITION_AREA = 384 * 384


def as_list(images) -> list:
    return list(images) if isinstance(images, (list, tuple)) else [images]


def dimensions(area: int, ratio: float) -> tuple[int, int]:
    """(width, height) of `area` pixels at width / height `ratio`, each rounded to 32 (diffusers'
    calculate_dimensions)."""
    width = math.sqrt(area * ratio)
    return round(width / 32) * 32, round(width / ratio / 32) * 32


def resized(image, area: int):
    """A PIL image resized to `area` pixels at its aspect ratio (Lanczos, as diffusers' VaeImageProcessor)."""
    from PIL import Image

    width, height = dimensions(area, image.width / image.height)
    return image.resize((width, height), resample=Image.Resampling.LANCZOS)


def output_size(which: int):
    """`size_from_image` of the validation stage: (height, width) from input image `which`."""

    def size(images) -> tuple[int, int]:
        image = as_list(images)[which]
        width, height = dimensions(VAE_AREA, image.width / image.height)
        return height, width

    return size


class QwenReferenceLatentStage(Stage):
    """Each input image through the VAE encoder (its distribution's mode, normalised with the
    latent mean / std) -> `state.image_embeds`: the list of reference latents [B, C, 1, h, w]
    that the DiT's context puts after the generated image's tokens."""

    name = "image_latents"
    reads = ("image",)
    writes = ("image_embeds",)

    def __init__(self, vae, spatial_stride: int):
        from diffusers.image_processor import VaeImageProcessor

        self.vae = vae
        self.processor = VaeImageProcessor(vae_scale_factor=spatial_stride * 2)

    def describe(self) -> str:
        return f"{self.name}({type(self.vae).__name__}, {VAE_AREA} pixel area)"

    @torch.no_grad()
    def __call__(self, state: GenerationState) -> None:
        p = next(self.vae.parameters())
        z = self.vae.config.z_dim
        mean = torch.tensor(self.vae.config.latents_mean).view(1, z, 1, 1, 1).to(p.device, p.dtype)
        std = torch.tensor(self.vae.config.latents_std).view(1, z, 1, 1, 1).to(p.device, p.dtype)
        latents = []
        for image in as_list(state.image):
            width, height = dimensions(VAE_AREA, image.width / image.height)
            pixels = self.processor.preprocess(image, height, width).unsqueeze(2)  # [1, 3, 1, H, W] in [-1, 1]
            mode = self.vae.encode(pixels.to(p.device, p.dtype)).latent_dist.mode()  # [1, C, 1, h, w]
            latents.append(((mode - mean) / std).float().repeat(state.batch_size, 1, 1, 1, 1).to(state.device))
        state.image_embeds = latents
