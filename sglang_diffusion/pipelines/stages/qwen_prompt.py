"""Qwen-Image prompt encoding: the prompt in the model's chat template through Qwen2.5-VL, the
last hidden state of its real tokens with the template's system part dropped, as diffusers'
`QwenImage*Pipeline._get_qwen_prompt_embeds` do. The prompt and the negative prompt are
encoded one at a time (as diffusers encodes them), so neither is padded.

The editing models put the input images into the prompt too: each becomes vision tokens
(`<|image_pad|>`, one per 2x2 merged 14-pixel patch) that the VL model's vision tower fills,
through the model's `processor` (`models.text_encoders.qwen2_vl_processor.QwenVLProcessor`
where torchvision is missing).
"""

from __future__ import annotations

import torch

from sglang_diffusion.errors import InvalidRequestError
from sglang_diffusion.pipelines.stages.base import GenerationState, Stage

_SYSTEM = "<|im_start|>system\n{}<|im_end|>\n<|im_start|>user\n"
_ASSISTANT = "<|im_end|>\n<|im_start|>assistant\n"
_EDIT_SYSTEM = ("Describe the key features of the input image (color, shape, size, texture, objects, background), "
                "then explain how the user's text instruction should alter or modify the image. Generate a new image "
                "that meets the user's requirements while maintaining consistency with the original input where "
                "appropriate.")
VISION = "<|vision_start|><|image_pad|><|vision_end|>"

# mode -> (template, tokens dropped from the front of the states: the system part and "user\n")
TEMPLATES = {
    "text": (_SYSTEM.format("Describe the image by detailing the color, shape, size, texture, quantity, text, spatial "
                            "relationships of the objects and background:") + "{}" + _ASSISTANT, 34),
    "edit": (_SYSTEM.format(_EDIT_SYSTEM) + VISION + "{}" + _ASSISTANT, 64),  # QwenImageEditPipeline: one image
    "edit_plus": (_SYSTEM.format(_EDIT_SYSTEM) + "{}" + _ASSISTANT, 64),  # each image as "Picture i: <vision>"
}
TOKENIZER_MAX_LENGTH = 1024
MAX_SEQUENCE_LENGTH = 512  # QwenImagePipeline's default max_sequence_length (the edit pipelines keep all)


class QwenPromptEncodingStage(Stage):
    """`mode`: "text" (QwenImagePipeline), "edit" (the input image in the template) or
    "edit_plus" (each input image introduced as "Picture i:"). Edits read `state.image` (one
    image or a list) and show the VL model each image resized to `condition_area` pixels."""

    name = "text_encoding"
    reads = ("params",)
    writes = ("prompt_embeds", "negative_prompt_embeds")

    def __init__(self, tokenizer, text_encoder, *, dtype: torch.dtype, mode: str = "text",
                 processor=None, condition_area: int | None = None,
                 max_sequence_length: int = MAX_SEQUENCE_LENGTH):
        assert mode in TEMPLATES and (mode == "text" or processor is not None and condition_area)
        self.tokenizer, self.text_encoder, self.dtype, self.mode = tokenizer, text_encoder, dtype, mode
        self.processor, self.condition_area = processor, condition_area
        self.max_sequence_length = max_sequence_length

    def describe(self) -> str:
        return f"{self.name}({type(self.text_encoder).__name__}, Qwen-Image {self.mode} template)"

    def _inputs(self, prompt: str, images: list | None) -> dict:
        template, drop = TEMPLATES[self.mode]
        if self.mode == "text":
            inputs = self.tokenizer([template.format(prompt)], max_length=TOKENIZER_MAX_LENGTH + drop, padding=True,
                                    truncation=True, return_tensors="pt")
            return {"input_ids": inputs.input_ids, "attention_mask": inputs.attention_mask}
        if self.mode == "edit_plus":
            prompt = "".join(f"Picture {i + 1}: {VISION}" for i in range(len(images))) + prompt
        return self.processor(text=[template.format(prompt)], images=images, padding=True, return_tensors="pt")

    def _encode(self, prompt: str, images: list | None, device: torch.device) -> torch.Tensor:
        """One prompt (and the condition images) -> its states [1, L, C]."""
        inputs = self._inputs(prompt, images)
        encoder_device = next(self.text_encoder.parameters()).device
        inputs = {k: v.to(encoder_device) for k, v in inputs.items()}
        # The VL model without its LM head: the hidden states are the same, and the head is not needed.
        out = self.text_encoder.model(**inputs, output_hidden_states=True)
        states = out.hidden_states[-1][0][inputs["attention_mask"][0].bool()]  # [T, C]
        states = states[TEMPLATES[self.mode][1]:]
        if self.mode == "text":
            states = states[:self.max_sequence_length]
        return states.unsqueeze(0).to(device=device, dtype=self.dtype)

    def __call__(self, state: GenerationState) -> None:
        from sglang_diffusion.pipelines.stages.qwen_edit import as_list, resized

        p, n = state.params, state.batch_size
        images = None
        if self.mode != "text":
            images = [resized(image, self.condition_area) for image in as_list(state.image)]
            if self.mode == "edit" and len(images) > 1:
                raise InvalidRequestError(f"image_path: {len(images)} images given; Qwen-Image-Edit takes one "
                                          "(Qwen-Image-Edit-Plus takes several)")
        state.prompt_embeds = self._encode(p.prompt, images, state.device).repeat_interleave(n, dim=0)  # [n, L, C]
        state.negative_prompt_embeds = (self._encode(p.negative_prompt, images, state.device)
                                        .repeat_interleave(n, dim=0) if state.do_cfg else None)
