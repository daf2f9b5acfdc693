"""Text encoding: prompt (and, with classifier-free guidance, negative prompt) -> T5-family
encoder states [B, L, C], padded to `max_sequence_length` with zeros after each prompt's tokens
(what Wan's DiT was trained on, and what diffusers' Wan pipelines do)."""

from __future__ import annotations

import html
import re

import torch

from sglang_diffusion.pipelines.stages.base import GenerationState, Stage


def clean_prompt(text: str) -> str:
    """ftfy (when installed) + HTML unescaping + whitespace collapsing, as diffusers' Wan pipelines.
    Printable ASCII without "&" skips ftfy, which leaves such text as it is (it mends non-ASCII
    text, HTML entities, control characters and line breaks): its import and first call are a
    tenth of a second of the demo generation's start-up."""
    if not (text.isascii() and text.isprintable() and "&" not in text):
        try:
            import ftfy

            text = ftfy.fix_text(text)
        except ImportError:
            pass
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


class TextEncodingStage(Stage):
    name = "text_encoding"
    reads = ("params",)
    writes = ("prompt_embeds", "negative_prompt_embeds")

    def __init__(self, tokenizer, text_encoder, *, dtype: torch.dtype, max_sequence_length: int = 512,
                 offload=None):
        """`offload`: a loader.offload.OffloadedModule when the encoder lives in host memory."""
        self.tokenizer, self.text_encoder, self.dtype = tokenizer, text_encoder, dtype
        self.max_sequence_length, self.offload = max_sequence_length, offload

    def describe(self) -> str:
        return f"{self.name}({type(self.text_encoder).__name__}{', offloaded' if self.offload else ''})"

    def _encode(self, prompts: list[str], device: torch.device) -> torch.Tensor:
        length = self.max_sequence_length
        inputs = self.tokenizer([clean_prompt(p) for p in prompts], padding="max_length", max_length=length,
                                truncation=True, add_special_tokens=True, return_attention_mask=True,
                                return_tensors="pt")
        mask = inputs.attention_mask
        encoder_device = next(self.text_encoder.parameters()).device
        states = self.text_encoder(inputs.input_ids.to(encoder_device), mask.to(encoder_device)).last_hidden_state
        states = states.to(device=device, dtype=self.dtype)  # [B, L, C]
        keep = mask.gt(0).to(device)[..., None]  # [B, L, 1]: zeros after each prompt's own tokens
        return torch.where(keep, states, torch.zeros((), dtype=states.dtype, device=device))

    def __call__(self, state: GenerationState) -> None:
        p, n = state.params, state.batch_size
        prompts = [p.prompt] + ([p.negative_prompt or ""] if state.do_cfg else [])
        if self.offload is not None:
            with self.offload.on_device():
                embeds = self._encode(prompts, state.device)
        else:
            embeds = self._encode(prompts, state.device)
        state.prompt_embeds = embeds[:1].repeat_interleave(n, dim=0)  # [n, L, C]
        state.negative_prompt_embeds = embeds[1:].repeat_interleave(n, dim=0) if state.do_cfg else None


class PooledTextEncodingStage(Stage):
    """FLUX.1's two encoders, as diffusers' FluxPipeline runs them: CLIP's pooled output of the
    prompt padded to the tokenizer's 77 tokens, and T5's states of the prompt padded to
    `max_sequence_length` (no attention mask, padding states kept: the DiT attends to them).
    With classifier-free guidance the negative prompt the same way."""

    name = "text_encoding"
    reads = ("params",)
    writes = ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds")

    def __init__(self, clip_tokenizer, clip_encoder, tokenizer, text_encoder, *, dtype: torch.dtype,
                 max_sequence_length: int = 512):
        self.clip_tokenizer, self.clip_encoder = clip_tokenizer, clip_encoder
        self.tokenizer, self.text_encoder, self.dtype = tokenizer, text_encoder, dtype
        self.max_sequence_length = max_sequence_length

    def describe(self) -> str:
        return f"{self.name}({type(self.clip_encoder).__name__} pooled + {type(self.text_encoder).__name__})"

    @staticmethod
    def _ids(tokenizer, prompts: list[str], length: int, encoder) -> torch.Tensor:
        ids = tokenizer(prompts, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
        return ids.input_ids.to(next(encoder.parameters()).device)

    def _encode(self, prompts: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        clip_ids = self._ids(self.clip_tokenizer, prompts, self.clip_tokenizer.model_max_length, self.clip_encoder)
        pooled = self.clip_encoder(clip_ids, output_hidden_states=False).pooler_output  # [B, C_clip]
        ids = self._ids(self.tokenizer, prompts, self.max_sequence_length, self.text_encoder)
        states = self.text_encoder(ids, output_hidden_states=False)[0]  # [B, L, C]
        return states.to(device, self.dtype), pooled.to(device, self.dtype)

    def __call__(self, state: GenerationState) -> None:
        p, n = state.params, state.batch_size
        states, pooled = self._encode([p.prompt] + ([p.negative_prompt or ""] if state.do_cfg else []), state.device)
        state.prompt_embeds = states[:1].repeat_interleave(n, dim=0)  # [n, L, C]
        state.pooled_prompt_embeds = pooled[:1].repeat_interleave(n, dim=0)  # [n, C_clip]
        if state.do_cfg:
            state.negative_prompt_embeds = states[1:].repeat_interleave(n, dim=0)
            state.negative_pooled_prompt_embeds = pooled[1:].repeat_interleave(n, dim=0)
