"""How the denoising loop turns latents into the DiT's input, per family mode. The loop calls
the same three methods whatever the mode, so a family quirk lives here, not in the loop:

- `model_input(latents)`: what the DiT sees [B, C_in, F', H', W'];
- `timestep(t, batch)`: the DiT's timestep, [B] or per token [B, S];
- `finalize(latents)`: the latents the VAE decodes;
- `context(model, state, negative)`: the DiT's per-request context of the prompt (or the
  negative prompt), from what the text stages wrote;
- `cat(conditionings)`: the conditioning of a batch of requests (`pipelines.batch`), each
  request's in order; what is not per output row (the reference images of requests that share
  their input image, by the batch key) is taken from the first.
"""

from __future__ import annotations

import torch


class TextOnly:
    """Text-to-video: latents as they are, one timestep per sample."""

    def model_input(self, latents: torch.Tensor) -> torch.Tensor:
        return latents

    def timestep(self, t: torch.Tensor, batch: int) -> torch.Tensor:
        return t.expand(batch)  # [B]

    def finalize(self, latents: torch.Tensor) -> torch.Tensor:
        return latents

    def context(self, model, state, negative: bool):
        embeds = state.negative_prompt_embeds if negative else state.prompt_embeds
        return model.encode_context(embeds, state.image_embeds)

    def cat(self, conditionings: list["TextOnly"]) -> "TextOnly":
        return self


class PooledText(TextOnly):
    """Text-to-image DiTs that take a pooled text embedding (and, guidance-distilled, the
    guidance scale as an embedding) beside the text states, and timesteps in [0, 1], the
    scheduler's t / 1000 (FLUX.1, as diffusers' FluxPipeline passes them)."""

    def timestep(self, t: torch.Tensor, batch: int) -> torch.Tensor:
        return t.expand(batch) / 1000  # [B]

    def context(self, model, state, negative: bool):
        embeds = state.negative_prompt_embeds if negative else state.prompt_embeds
        pooled = state.negative_pooled_prompt_embeds if negative else state.pooled_prompt_embeds
        guidance = state.params.guidance_scale if model.config.guidance_embeds else None
        return model.encode_context(embeds, pooled, guidance)


class GuidedText(PooledText):
    """FLUX.2: the text states alone (no pooled embedding), the guidance scale as an embedding,
    timesteps t / 1000; `reference` (tokens [1, R, C], ids [R, 4]): the reference images' latent
    tokens that the DiT reads beside the noise (editing), or None."""

    def __init__(self, reference: tuple[torch.Tensor, torch.Tensor] | None = None):
        self.reference = reference

    def context(self, model, state, negative: bool):
        embeds = state.negative_prompt_embeds if negative else state.prompt_embeds
        guidance = state.params.guidance_scale if model.config.guidance_embeds else None
        return model.encode_context(embeds, guidance, *(self.reference or ()))


class ChannelConcat(TextOnly):
    """Wan2.1 I2V: the DiT reads [latents, frame mask, VAE latents of image + empty frames]
    along channels; `condition` [B, 4 + C, F', H', W']."""

    def __init__(self, condition: torch.Tensor):
        self.condition = condition

    def model_input(self, latents: torch.Tensor) -> torch.Tensor:
        return torch.cat([latents, self.condition.to(latents.dtype)], dim=1)

    def cat(self, conditionings: list["ChannelConcat"]) -> "ChannelConcat":
        return ChannelConcat(torch.cat([c.condition for c in conditionings]))


class FirstFrame(TextOnly):
    """Wan2.2 TI2V with an image: the first latent frame is the image's latents, kept clean
    (timestep 0 for its tokens); `condition` [B, C, 1, H', W'], `mask` [1, 1, F', H', W']
    (0 on the first frame, 1 elsewhere), `patch` the DiT's (height, width) patch."""

    def __init__(self, condition: torch.Tensor, mask: torch.Tensor, patch: tuple[int, int]):
        self.condition, self.mask, self.patch = condition, mask, patch

    def model_input(self, latents: torch.Tensor) -> torch.Tensor:
        return (1 - self.mask) * self.condition + self.mask * latents

    def timestep(self, t: torch.Tensor, batch: int) -> torch.Tensor:
        p_h, p_w = self.patch
        per_token = (self.mask[0, 0, :, ::p_h, ::p_w] * t).flatten()  # [S]
        return per_token.unsqueeze(0).expand(batch, -1)  # [B, S]

    def finalize(self, latents: torch.Tensor) -> torch.Tensor:
        return self.model_input(latents)

    def cat(self, conditionings: list["FirstFrame"]) -> "FirstFrame":
        return FirstFrame(torch.cat([c.condition for c in conditionings]), self.mask, self.patch)
