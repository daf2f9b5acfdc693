"""FLUX.1 Kontext's input image, as diffusers' `FluxKontextPipeline` prepares it.

The image is resized to the Kontext training resolution of the nearest aspect ratio
(`PREFERRED_KONTEXT_RESOLUTIONS`, about a megapixel), cropped down to a multiple of 16, VAE-encoded
(the distribution's mode), normalised as FLUX.1's latents, `(z - shift_factor) * scaling_factor`,
and packed 2x2 into tokens. Those reference tokens follow the noise tokens in the DiT's sequence,
with position ids (1, row, column) on their own grid (the generated image's first id is 0); the
DiT's prediction keeps only the noise tokens'. Without an input image Kontext is text to image.
"""

from __future__ import annotations

import torch

from sglang_diffusion.errors import InvalidRequestError
from sglang_diffusion.pipelines.stages.base import GenerationState, Stage
from sglang_diffusion.pipelines.stages.conditioning import PooledText


class KontextText(PooledText):
    """FLUX.1 conditioning (T5 states, CLIP pooled, guidance embedding, t / 1000) with the input
    image's reference tokens (tokens [1, R, 4C], ids [R, 3]) in both CFG branches, or None."""

    def __init__(self, reference: tuple[torch.Tensor, torch.Tensor] | None = None):
        self.reference = reference

    def context(self, model, state, negative: bool):
        embeds = state.negative_prompt_embeds if negative else state.prompt_embeds
        pooled = state.negative_pooled_prompt_embeds if negative else state.pooled_prompt_embeds
        guidance = state.params.guidance_scale if model.config.guidance_embeds else None
        tokens, ids = self.reference or (None, None)
        return model.encode_context(embeds, pooled, guidance, reference=tokens, reference_ids=ids)


class KontextImageStage(Stage):
    name = "reference_images"
    reads = ("params", "latents")
    writes = ("conditioning",)

    def __init__(self, vae, spatial_stride: int):
        from diffusers.image_processor import VaeImageProcessor

        self.vae, self.multiple = vae, 2 * spatial_stride
        self.processor = VaeImageProcessor(vae_scale_factor=self.multiple)

    def _pixels(self, image) -> torch.Tensor:
        """A PIL image -> [1, 3, H, W] in [-1, 1] at the nearest Kontext resolution."""
        from diffusers.pipelines.flux.pipeline_flux_kontext import PREFERRED_KONTEXT_RESOLUTIONS

        height, width = self.processor.get_default_height_width(image)
        aspect = width / height
        _, width, height = min((abs(aspect - w / h), w, h) for w, h in PREFERRED_KONTEXT_RESOLUTIONS)
        height, width = height // self.multiple * self.multiple, width // self.multiple * self.multiple
        return self.processor.preprocess(self.processor.resize(image, height, width), height, width)

    def __call__(self, state: GenerationState) -> None:
        from sglang_diffusion.models.dits.flux import image_ids, pack_latents

        if state.image is None:
            return
        if isinstance(state.image, list):
            raise InvalidRequestError(f"image_path: FLUX.1 Kontext takes one input image, got {len(state.image)}")
        if getattr(self.vae, "encoder", None) is None:
            raise InvalidRequestError("image_path: the VAE encoder was not loaded (vae_config.load_encoder=false)")
        p = next(self.vae.parameters())
        latents = self.vae.encode(self._pixels(state.image).to(p.device, p.dtype)).latent_dist.mode()
        latents = (latents - self.vae.config.shift_factor) * self.vae.config.scaling_factor  # [1, C, h, w]
        h, w = latents.shape[2:]
        tokens = pack_latents(latents).to(state.device, torch.float32)  # [1, h/2 * w/2, 4C]
        state.conditioning = KontextText((tokens, image_ids(h // 2, w // 2, first=1.0, device=state.device)))
