"""Image conditioning stages (image-to-video).

- `ImageEncodingStage`: CLIP vision tokens of the input image (penultimate layer), which the
  Wan2.1 I2V DiT attends to beside the text.
- `ImageLatentStage`: the input image through the VAE encoder, as the latent conditioning the
  DiT reads: Wan2.1 I2V concatenates a frame mask and the latents of [image, empty frames]
  along channels; Wan2.2 TI2V puts the image's latents in the first frame. Runs after latent
  preparation (the noise is drawn first, as diffusers draws it).
"""

from __future__ import annotations

import torch

from sglang_diffusion.errors import InvalidRequestError
from sglang_diffusion.pipelines.stages.base import GenerationState, Stage
from sglang_diffusion.pipelines.stages.conditioning import ChannelConcat, FirstFrame


class ImageEncodingStage(Stage):
    name = "image_encoding"
    reads = ("image",)
    writes = ("image_embeds",)

    def __init__(self, image_processor, image_encoder, dtype: torch.dtype):
        self.image_processor, self.image_encoder, self.dtype = image_processor, image_encoder, dtype

    def describe(self) -> str:
        return f"{self.name}({type(self.image_encoder).__name__})"

    def __call__(self, state: GenerationState) -> None:
        p = next(self.image_encoder.parameters())
        pixels = self.image_processor(images=state.image, return_tensors="pt").pixel_values.to(p.device, p.dtype)
        hidden = self.image_encoder(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]  # [1, L, C]
        state.image_embeds = hidden.to(state.device, self.dtype).repeat(state.batch_size, 1, 1)


def _latent_stats(vae, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, 1 / std) per latent channel, [1, C, 1, 1, 1]: what diffusers normalises with."""
    z = vae.config.z_dim
    mean = torch.tensor(vae.config.latents_mean).view(1, z, 1, 1, 1).to(like.device, like.dtype)
    inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, z, 1, 1, 1).to(like.device, like.dtype)
    return mean, inv_std


class ImageLatentStage(Stage):
    """`mode`: "concat" (Wan2.1 I2V) or "first_frame" (Wan2.2 TI2V, only when an image is given)."""

    name = "image_latents"
    reads = ("params", "latents")
    writes = ("conditioning",)

    def __init__(self, vae, mode: str, temporal_stride: int, spatial_stride: int, patch: tuple[int, int]):
        from diffusers.video_processor import VideoProcessor

        assert mode in ("concat", "first_frame")
        self.vae, self.mode, self.temporal_stride, self.patch = vae, mode, temporal_stride, patch
        self.video_processor = VideoProcessor(vae_scale_factor=spatial_stride)

    def describe(self) -> str:
        return f"{self.name}({self.mode})"

    def _encode(self, video: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        if getattr(self.vae, "encoder", None) is None:
            raise InvalidRequestError("image_path: the VAE encoder was not loaded (vae_config.load_encoder=false)")
        p = next(self.vae.parameters())
        latents = self.vae.encode(video.to(p.device, p.dtype)).latent_dist.mode()  # [1, C, F', H', W']
        latents = latents.to(like.device, like.dtype)
        mean, inv_std = _latent_stats(self.vae, like)
        return (latents - mean) * inv_std

    def __call__(self, state: GenerationState) -> None:
        if state.image is None:
            return  # TI2V without an image: text-to-video
        p, latents = state.params, state.latents
        b, _, latent_frames, h, w = latents.shape
        image = self.video_processor.preprocess(state.image, height=p.height, width=p.width)
        image = image.to(state.device, torch.float32).unsqueeze(2)  # [1, 3, 1, H, W] in [-1, 1]
        if self.mode == "first_frame":
            condition = self._encode(image, latents).repeat(b, 1, 1, 1, 1)  # [B, C, 1, h, w]
            mask = torch.ones(1, 1, latent_frames, h, w, dtype=latents.dtype, device=latents.device)
            mask[:, :, 0] = 0
            state.conditioning = FirstFrame(condition, mask, self.patch)
            return
        empty = image.new_zeros(1, 3, p.num_frames - 1, p.height, p.width)
        condition = self._encode(torch.cat([image, empty], dim=2), latents).repeat(b, 1, 1, 1, 1)
        # Frame mask in latent time: the first pixel frame counts `temporal_stride` times (the
        # VAE's first latent frame encodes one frame, the others `temporal_stride` each).
        mask = torch.zeros(b, 1, p.num_frames + self.temporal_stride - 1, h, w, device=latents.device)
        mask[:, :, :self.temporal_stride] = 1
        mask = mask.view(b, -1, self.temporal_stride, h, w).transpose(1, 2)  # [B, stride, F', h, w]
        state.conditioning = ChannelConcat(torch.cat([mask.to(condition.dtype), condition], dim=1))
