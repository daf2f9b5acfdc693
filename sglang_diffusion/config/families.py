"""Model families: which family a model_index.json describes, and that family's sampling defaults.

Defaults sit between the global defaults and the user's config file / flags (see
`config.loading`). A family is told apart by its pipeline class and, where one class serves
several families (Wan2.1 vs Wan2.2), by the extra keys of model_index.json.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import PurePath


@dataclass(frozen=True)
class Family:
    name: str
    task: str  # "t2v", "i2v", "ti2v", "t2i", "i2i" (image edits)
    defaults: dict = field(default_factory=dict)
    # resolution shortcut -> (short side, long side) where the model's own size differs from
    # the 16:9 rule of config.resolutions
    resolutions: dict = field(default_factory=dict)

    @property
    def is_video(self) -> bool:
        return self.task not in ("t2i", "i2i")

    @property
    def makes_images(self) -> bool:
        """Whether it makes an image from a prompt: image models, and text-to-video models as one frame."""
        return not self.is_video or self.task in ("t2v", "ti2v")


WAN_RESOLUTIONS = {"480p": (480, 832)}  # Wan's 480p training size (16:9 would be 848)

FAMILIES = {
    f.name: f for f in [
        Family("wan2.1-t2v", "t2v", dict(height=480, width=832, num_frames=81, fps=16,
                                         num_inference_steps=50, guidance_scale=5.0), WAN_RESOLUTIONS),
        Family("wan2.1-i2v", "i2v", dict(height=480, width=832, num_frames=81, fps=16,
                                         num_inference_steps=50, guidance_scale=5.0), WAN_RESOLUTIONS),
        Family("wan2.2-t2v-a14b", "t2v", dict(height=720, width=1280, num_frames=81, fps=16,
                                              num_inference_steps=40, guidance_scale=4.0,
                                              guidance_scale_2=3.0), WAN_RESOLUTIONS),
        Family("wan2.2-ti2v-5b", "ti2v", dict(height=704, width=1280, num_frames=121, fps=24,
                                              num_inference_steps=50, guidance_scale=5.0), {"720p": (704, 1280)}),
        Family("hunyuanvideo", "t2v", dict(height=720, width=1280, num_frames=129, fps=24,
                                           num_inference_steps=50, guidance_scale=6.0)),
        # FastVideo's 6-step distillation of HunyuanVideo: same architecture and model_index.json,
        # told apart by its name; its flow shift (17) is in its own scheduler_config.json.
        Family("fasthunyuan", "t2v", dict(height=720, width=1280, num_frames=125, fps=24,
                                          num_inference_steps=6, guidance_scale=6.0)),
        Family("flux.1", "t2i", dict(height=1024, width=1024, num_inference_steps=28, guidance_scale=3.5)),
        # diffusers' FluxKontextPipeline defaults; without an input image it is text to image
        Family("flux.1-kontext", "i2i", dict(height=1024, width=1024, num_inference_steps=28, guidance_scale=3.5)),
        Family("flux.2", "t2i", dict(height=1024, width=1024, num_inference_steps=50, guidance_scale=4.0)),
        Family("qwen-image", "t2i", dict(height=1024, width=1024, num_inference_steps=50,
                                         true_cfg_scale=4.0)),  # with a negative prompt
        # The output size defaults to the input image's aspect ratio at 1024 x 1024 pixels.
        Family("qwen-image-edit", "i2i", dict(num_inference_steps=50, true_cfg_scale=4.0)),
        Family("qwen-image-edit-plus", "i2i", dict(num_inference_steps=50, true_cfg_scale=4.0)),
    ]
}

GENERIC_VIDEO_FPS = 24


# Distilled checkpoints that keep their base model's model_index.json: (pipeline class, a word of
# the model's name or folder, case-insensitive) -> family.
NAMED_VARIANTS = {("HunyuanVideoPipeline", "fasthunyuan"): "fasthunyuan"}


def detect_family(class_name: str, extras: dict, where: str | PurePath = "") -> Family | None:
    """The family of a model_index.json (`_class_name` and its non-component keys); None if unknown.

    `where` is the model's id or folder (a Hugging Face cache folder keeps the id in its name:
    models--FastVideo--FastHunyuan-diffusers/snapshots/...), for the variants of NAMED_VARIANTS."""
    for (variant_class, word), name in NAMED_VARIANTS.items():
        if class_name == variant_class and word in str(where).lower():
            return FAMILIES[name]
    if class_name == "WanPipeline":
        if extras.get("expand_timesteps"):
            return FAMILIES["wan2.2-ti2v-5b"]
        if extras.get("boundary_ratio") is not None:
            return FAMILIES["wan2.2-t2v-a14b"]
        return FAMILIES["wan2.1-t2v"]
    name = {
        "WanImageToVideoPipeline": "wan2.1-i2v",
        "HunyuanVideoPipeline": "hunyuanvideo",
        "FluxPipeline": "flux.1",
        "FluxKontextPipeline": "flux.1-kontext",
        "Flux2Pipeline": "flux.2",
        "QwenImagePipeline": "qwen-image",
        "QwenImageEditPipeline": "qwen-image-edit",
        "QwenImageEditPlusPipeline": "qwen-image-edit-plus",
    }.get(class_name)
    return FAMILIES[name] if name else None
