"""Qwen-Image prompt encoding: the prompt in Qwen-Image's chat template through Qwen2.5-VL, the
last hidden state of its real tokens with the template's system part dropped, as diffusers'
`QwenImagePipeline._get_qwen_prompt_embeds` does. The prompt and the negative prompt are
encoded one at a time (as diffusers encodes them), so neither is padded.
"""

from __future__ import annotations

import torch

from sglang_diffusion.pipelines.stages.base import GenerationState, Stage

TEXT_TEMPLATE = ("<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, "
                 "text, spatial relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}"
                 "<|im_end|>\n<|im_start|>assistant\n")
TEXT_TEMPLATE_TOKENS = 34  # the system part and "<|im_start|>user\n": dropped from the states
TOKENIZER_MAX_LENGTH = 1024
MAX_SEQUENCE_LENGTH = 512  # diffusers' default max_sequence_length: states kept per prompt


class QwenPromptEncodingStage(Stage):
    name = "text_encoding"
    reads = ("params",)
    writes = ("prompt_embeds", "negative_prompt_embeds")

    def __init__(self, tokenizer, text_encoder, *, dtype: torch.dtype, max_sequence_length: int = MAX_SEQUENCE_LENGTH):
        self.tokenizer, self.text_encoder, self.dtype = tokenizer, text_encoder, dtype
        self.max_sequence_length = max_sequence_length

    def describe(self) -> str:
        return f"{self.name}({type(self.text_encoder).__name__}, Qwen-Image template)"

    def _encode(self, prompt: str, device: torch.device) -> torch.Tensor:
        """One prompt -> its states [1, L, C] (L <= max_sequence_length)."""
        inputs = self.tokenizer([TEXT_TEMPLATE.format(prompt)], max_length=TOKENIZER_MAX_LENGTH + TEXT_TEMPLATE_TOKENS,
                                padding=True, truncation=True, return_tensors="pt")
        encoder_device = next(self.text_encoder.parameters()).device
        # The language model alone: the hidden states are the same, and the LM head is not needed.
        out = self.text_encoder.model(input_ids=inputs.input_ids.to(encoder_device),
                                      attention_mask=inputs.attention_mask.to(encoder_device),
                                      output_hidden_states=True)
        states = out.hidden_states[-1][0][inputs.attention_mask[0].bool().to(encoder_device)]  # [T, C]
        states = states[TEXT_TEMPLATE_TOKENS:][:self.max_sequence_length]
        return states.unsqueeze(0).to(device=device, dtype=self.dtype)

    def __call__(self, state: GenerationState) -> None:
        p, n = state.params, state.batch_size
        state.prompt_embeds = self._encode(p.prompt, state.device).repeat_interleave(n, dim=0)  # [n, L, C]
        state.negative_prompt_embeds = (self._encode(p.negative_prompt, state.device).repeat_interleave(n, dim=0)
                                        if state.do_cfg else None)
