"""HunyuanVideo prompt encoding, as diffusers' `HunyuanVideoPipeline.encode_prompt`: the prompt in
its video-description template through the Llama encoder, read at the third-to-last hidden
state with the template's first `crop_start` tokens dropped, and the CLIP text encoder's
pooled output. With embedded guidance (guidance-distilled models) the guidance scale goes with
them into the DiT (`TextConditioning.guidance`, scale x 1000 as diffusers passes it).

The Llama prompt is encoded without padding: the encoder is causal and the prompt's tokens
come first, so their states are those of the padded prompt, and the DiT would drop the padding
anyway (`models.dits.hunyuan_video`).
"""

from __future__ import annotations

import torch

from sglang_diffusion.models.dits.hunyuan_video import TextConditioning
from sglang_diffusion.pipelines.stages.base import GenerationState, Stage

MAX_SEQUENCE_LENGTH = 256  # Llama tokens after the template (diffusers' default)
CLIP_MAX_LENGTH = 77
HIDDEN_STATE_SKIP = 2  # read hidden_states[-(2 + 1)]


def prompt_template() -> tuple[str, int]:
    """(template with one {} for the prompt, tokens of it to drop): diffusers' default."""
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE

    return DEFAULT_PROMPT_TEMPLATE["template"], DEFAULT_PROMPT_TEMPLATE["crop_start"]


class HunyuanPromptEncodingStage(Stage):
    name = "text_encoding"
    reads = ("params",)
    writes = ("prompt_embeds", "negative_prompt_embeds")

    def __init__(self, tokenizer, text_encoder, tokenizer_2, text_encoder_2, *, dtype: torch.dtype,
                 embedded_guidance: bool, offload: tuple = (None, None)):
        """`offload`: loader.offload.OffloadedModule of each encoder when it lives in host memory."""
        self.tokenizer, self.text_encoder = tokenizer, text_encoder
        self.tokenizer_2, self.text_encoder_2 = tokenizer_2, text_encoder_2
        self.dtype, self.embedded_guidance, self.offload = dtype, embedded_guidance, offload
        self.template, self.crop_start = prompt_template()

    def describe(self) -> str:
        return (f"{self.name}({type(self.text_encoder).__name__} + {type(self.text_encoder_2).__name__} pooled"
                f"{', embedded guidance' if self.embedded_guidance else ''})")

    @staticmethod
    def _on_device(module, offload):
        from contextlib import nullcontext

        return offload.on_device() if offload is not None else nullcontext(module)

    def _llama(self, prompt: str) -> torch.Tensor:
        """-> states [1, L, C] of the prompt's tokens after the template's first crop_start."""
        inputs = self.tokenizer([self.template.format(prompt)], max_length=MAX_SEQUENCE_LENGTH + self.crop_start,
                                truncation=True, return_tensors="pt")
        with self._on_device(self.text_encoder, self.offload[0]) as encoder:
            device = next(encoder.parameters()).device
            out = encoder(input_ids=inputs.input_ids.to(device), attention_mask=inputs.attention_mask.to(device),
                          output_hidden_states=True)
            return out.hidden_states[-(HIDDEN_STATE_SKIP + 1)][:, self.crop_start:]

    def _clip(self, prompt: str) -> torch.Tensor:
        """-> pooled [1, C']."""
        ids = self.tokenizer_2([prompt], padding="max_length", max_length=CLIP_MAX_LENGTH, truncation=True,
                               return_tensors="pt").input_ids
        with self._on_device(self.text_encoder_2, self.offload[1]) as encoder:
            return encoder(ids.to(next(encoder.parameters()).device), output_hidden_states=False).pooler_output

    def _encode(self, prompt: str, state: GenerationState) -> TextConditioning:
        n, device = state.batch_size, state.device
        states = self._llama(prompt).to(device=device, dtype=self.dtype).repeat_interleave(n, dim=0)  # [n, L, C]
        pooled = self._clip(prompt).to(device=device, dtype=self.dtype).repeat_interleave(n, dim=0)  # [n, C']
        guidance = None
        if self.embedded_guidance:
            guidance = torch.full((n,), state.params.guidance_scale, dtype=self.dtype, device=device) * 1000.0
        mask = torch.ones(states.shape[:2], dtype=torch.int64, device=device)
        return TextConditioning(states, mask, pooled, guidance)

    def __call__(self, state: GenerationState) -> None:
        p = state.params
        state.prompt_embeds = self._encode(p.prompt, state)
        state.negative_prompt_embeds = self._encode(p.negative_prompt or "", state) if state.do_cfg else None
