"""FLUX.2's own stages: prompt encoding and reference images.

Prompt encoding, as diffusers' `Flux2Pipeline._get_mistral_3_small_prompt_embeds`:
the prompt in FLUX.2's chat format (its system message, then the user's text) through the
tokenizer's chat template, padded to `max_sequence_length`; Mistral 3's hidden states of the
layers `hidden_state_layers` stacked along channels: [B, L, layers * hidden].

The tokenizer is the text part of the model's PixtralProcessor folder (or the processor itself
when torchvision is installed): text prompts need nothing else.

Reference images (editing, one or more): each resized as diffusers' Flux2Pipeline does (to at
most 1024 x 1024 pixels, cropped to a multiple of 16), VAE-encoded (the distribution's mode),
2x2-patchified and normalised by the VAE's batch-norm statistics; their tokens follow the
noise tokens in the DiT's sequence, image i with RoPE time coordinate 10 + 10 i."""

from __future__ import annotations

import torch

from sglang_diffusion.errors import InvalidRequestError
from sglang_diffusion.pipelines.stages.base import GenerationState, Stage
from sglang_diffusion.pipelines.stages.conditioning import GuidedText

HIDDEN_STATE_LAYERS = (10, 20, 30)  # diffusers' text_encoder_out_layers
MAX_SEQUENCE_LENGTH = 512


class Flux2PromptEncodingStage(Stage):
    name = "text_encoding"
    reads = ("params",)
    writes = ("prompt_embeds", "negative_prompt_embeds")

    def __init__(self, tokenizer, text_encoder, *, dtype: torch.dtype, max_sequence_length: int = MAX_SEQUENCE_LENGTH,
                 hidden_state_layers: tuple[int, ...] = HIDDEN_STATE_LAYERS):
        self.tokenizer, self.text_encoder, self.dtype = tokenizer, text_encoder, dtype
        self.max_sequence_length, self.layers = max_sequence_length, tuple(hidden_state_layers)

    def describe(self) -> str:
        return f"{self.name}({type(self.text_encoder).__name__}, hidden states {list(self.layers)})"

    def _encode(self, prompts: list[str], device: torch.device) -> torch.Tensor:
        from diffusers.pipelines.flux2.pipeline_flux2 import SYSTEM_MESSAGE, format_input

        inputs = self.tokenizer.apply_chat_template(
            format_input(prompts=prompts, system_message=SYSTEM_MESSAGE), add_generation_prompt=False,
            tokenize=True, return_dict=True, return_tensors="pt", padding="max_length", truncation=True,
            max_length=self.max_sequence_length)
        encoder_device = next(self.text_encoder.parameters()).device
        out = self.text_encoder(input_ids=inputs["input_ids"].to(encoder_device),
                                attention_mask=inputs["attention_mask"].to(encoder_device),
                                output_hidden_states=True, use_cache=False)
        states = torch.stack([out.hidden_states[k] for k in self.layers], dim=2)  # [B, L, layers, C]
        return states.flatten(2).to(device, self.dtype)  # [B, L, layers * C]

    def __call__(self, state: GenerationState) -> None:
        p, n = state.params, state.batch_size
        # one prompt at a time, as diffusers encodes them (padding makes them the same length)
        embeds = [self._encode([text], state.device) for text in [p.prompt] + ([p.negative_prompt or ""]
                                                                             if state.do_cfg else [])]
        state.prompt_embeds = embeds[0].repeat_interleave(n, dim=0)  # [n, L, C]
        state.negative_prompt_embeds = embeds[1].repeat_interleave(n, dim=0) if state.do_cfg else None


MAX_REFERENCE_PIXELS = 1024 * 1024


class Flux2ReferenceImageStage(Stage):
    name = "reference_images"
    reads = ("params", "latents")
    writes = ("conditioning",)

    def __init__(self, vae, spatial_stride: int):
        from diffusers.pipelines.flux2.image_processor import Flux2ImageProcessor

        self.vae, self.multiple = vae, 2 * spatial_stride
        self.processor = Flux2ImageProcessor(vae_scale_factor=self.multiple)

    def _latents(self, image) -> torch.Tensor:
        """A PIL image -> its normalised, patchified latents [1, 4C, h, w]."""
        try:
            self.processor.check_image_input(image)  # diffusers' limits: sides >= 64, aspect ratio
        except ValueError as e:
            raise InvalidRequestError(f"image_path: {e}") from None
        width, height = image.size
        if width * height > MAX_REFERENCE_PIXELS:
            image = self.processor._resize_to_target_area(image, MAX_REFERENCE_PIXELS)
            width, height = image.size
        width, height = width // self.multiple * self.multiple, height // self.multiple * self.multiple
        pixels = self.processor.preprocess(image, height=height, width=width, resize_mode="crop")  # [1, 3, H, W]
        p = next(self.vae.parameters())
        latents = self.vae.encode(pixels.to(p.device, p.dtype)).latent_dist.mode()  # [1, C, H/8, W/8]
        b, c, h, w = latents.shape
        latents = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, 4 * c, h // 2, w // 2)
        bn = self.vae.bn
        mean = bn.running_mean.view(1, -1, 1, 1).to(latents)
        std = torch.sqrt(bn.running_var.view(1, -1, 1, 1) + self.vae.config.batch_norm_eps).to(latents)
        return (latents - mean) / std

    def __call__(self, state: GenerationState) -> None:
        from sglang_diffusion.models.dits.flux2 import latent_ids

        if state.image is None:
            return
        if getattr(self.vae, "encoder", None) is None:
            raise InvalidRequestError("image_path: the VAE encoder was not loaded (vae_config.load_encoder=false)")
        images = state.image if isinstance(state.image, list) else [state.image]
        tokens, ids = [], []
        for i, image in enumerate(images):
            latents = self._latents(image)  # [1, 4C, h, w]
            tokens.append(latents.flatten(2).transpose(1, 2))  # [1, h*w, 4C]
            ids.append(latent_ids(*latents.shape[2:], t=10 + 10 * i))
        reference = torch.cat(tokens, dim=1).to(state.device, torch.float32), torch.cat(ids).to(state.device)
        state.conditioning = GuidedText(reference)
