"""Qwen2-VL's processor for images and text without torchvision: transformers' Qwen2VLProcessor
builds only with torchvision installed (for its video processor), which image prompts do not
need. `QwenVLProcessor` makes the same inputs for text and images (Qwen-Image-Edit's prompts)
and stands in for it on both backends (`loader.components.torchvision_free_components`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from sglang_diffusion.errors import ModelLoadError

logger = logging.getLogger(__name__)

IMAGE_TOKEN = "<|image_pad|>"


class QwenVLProcessor:
    """Text with `<|image_pad|>` placeholders and images -> the VL model's inputs (input_ids,
    attention_mask, pixel_values, image_grid_thw), as Qwen2VLProcessor makes them: each
    placeholder, in order, expands to one token per merged patch of its image."""

    def __init__(self, tokenizer, image_processor):
        self.tokenizer, self.image_processor = tokenizer, image_processor

    @classmethod
    def from_folder(cls, folder: str | Path, tokenizer) -> "QwenVLProcessor":
        """The image processor of a `processor/` folder (preprocessor_config.json): transformers'
        torchvision one where torchvision is installed, else its PIL twin, same settings."""
        path = Path(folder) / "preprocessor_config.json"
        try:
            config = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"{path}: cannot read the Qwen2-VL image processor config ({e})") from None
        settings = {k: v for k, v in config.items() if k not in ("image_processor_type", "processor_class")}
        try:
            import torchvision  # noqa: F401
            from transformers import Qwen2VLImageProcessor as ImageProcessor
        except ImportError:
            from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
                Qwen2VLImageProcessorPil as ImageProcessor)

            logger.info("torchvision is not installed: the Qwen2-VL images go through transformers' PIL image "
                        "processor (%s)", ImageProcessor.__name__)
        return cls(tokenizer, ImageProcessor(**settings))

    def __call__(self, text: list[str], images: list | None = None, padding: bool = True,
                 return_tensors: str = "pt"):
        from transformers import BatchFeature

        inputs = {}
        if images:
            inputs = dict(self.image_processor(images=images, return_tensors=return_tensors))
            counts = iter((inputs["image_grid_thw"].prod(-1) // self.image_processor.merge_size**2).tolist())
            expanded = []
            for t in text:
                pieces = t.split(IMAGE_TOKEN)
                expanded.append(pieces[0] + "".join(IMAGE_TOKEN * next(counts) + rest for rest in pieces[1:]))
            text = expanded
        tokens = self.tokenizer(text, padding=padding, return_tensors=return_tensors)
        return BatchFeature({"input_ids": tokens.input_ids, "attention_mask": tokens.attention_mask, **inputs})
