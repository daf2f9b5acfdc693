"""Qwen-Image: QwenImagePipeline folders, `full` as Qwen/Qwen-Image (60-layer MMDiT, the
last hidden state of Qwen2.5-VL-7B as text, the Wan-style 16-channel image VAE), and the
editing models (`qwen-image-edit`: QwenImageEditPipeline, `qwen-image-edit-plus`:
QwenImageEditPlusPipeline, `qwen-image-edit-2511`: the same pipeline with a `zero_cond_t` DiT,
whose reference tokens take the t = 0 modulation), which add the Qwen2-VL processor that feeds
the input images to the vision tower."""

from __future__ import annotations

from sglang_diffusion.testing import tokenizers
from sglang_diffusion.testing.presets import by_preset
from sglang_diffusion.testing.text_encoders import sized_config, text_dims
from sglang_diffusion.testing.vision import CLIP_MEAN, CLIP_STD, wan_vae_config
from sglang_diffusion.testing.writer import Asset, JsonFiles, PipelineSpec, Weights, dit_pipeline, flow_match_scheduler

EDIT_PIPELINES = {"qwen-image-edit": "QwenImageEditPipeline", "qwen-image-edit-plus": "QwenImageEditPlusPipeline",
                  "qwen-image-edit-2511": "QwenImageEditPlusPipeline"}
ZERO_COND_T = ("qwen-image-edit-2511",)
VISION_PATCH = 14


def qwen_image_scheduler() -> Asset:
    """Qwen/Qwen-Image's scheduler/scheduler_config.json: the shift ends at 0.02; its other keys
    (an exponential time shift, no Karras / beta / exponential sigmas) are the defaults, which
    the saved file carries too."""
    return flow_match_scheduler(max_image_seq_len=8192, max_shift=0.9, shift=1.0, shift_terminal=0.02)


def transformer_config(preset: str, text_dim: int, zero_cond_t: bool = False) -> dict:
    size = by_preset(
        preset,
        tiny=dict(num_layers=2, num_attention_heads=2, attention_head_dim=16, axes_dims_rope=[4, 6, 6]),
        small=dict(num_layers=4, num_attention_heads=8, attention_head_dim=64, axes_dims_rope=[8, 28, 28]),
        full=dict(num_layers=60, num_attention_heads=24, attention_head_dim=128, axes_dims_rope=[16, 56, 56]),
    )
    return dict(
        patch_size=2,
        in_channels=64,
        out_channels=16,
        **size,
        joint_attention_dim=text_dim,
        guidance_embeds=False,
        **({"zero_cond_t": True} if zero_cond_t else {}),
    )


def _text_encoder(preset: str) -> tuple[Weights, Asset]:
    """Qwen2.5-VL with its vision tower reduced to one block in every preset (text-to-image
    never runs it, the editing models run it on their input images)."""
    tokenizer = tokenizers.qwen2_tokenizer()
    dims = text_dims(preset, full_hidden=3584, full_head_dim=128, full_heads=28)
    half = dims["head_dim"] // 2
    specials = list(tokenizers.QWEN2_SPECIAL_TOKENS)
    ids = dict(zip(specials, tokenizer.convert_tokens_to_ids(specials), strict=True))
    text_config = sized_config(
        dims,
        len(tokenizer),
        num_key_value_heads=by_preset(preset, 2, 2, 4),
        hidden_act="silu",
        max_position_embeddings=128000,
        rms_norm_eps=1e-6,
        # Multimodal RoPE: the head's frequencies split over (time, height, width) as 1:1.5:1.5.
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 1000000.0,
            "mrope_section": [half // 4, 3 * half // 8, 3 * half // 8],
        },
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
    )  # fmt: skip
    vision_config = dict(
        depth=1,
        hidden_size=32,
        intermediate_size=32,
        num_heads=2,
        out_hidden_size=dims["hidden"],
        patch_size=VISION_PATCH,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=112,
        fullatt_block_indexes=[0],
        tokens_per_second=2,
    )
    config = dict(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    return (
        Weights("transformers", "Qwen2_5_VLForConditionalGeneration", config, "Qwen2_5_VLConfig"),
        Asset("transformers", "Qwen2Tokenizer", tokenizers.qwen2_tokenizer),
    )


class _Qwen2VLProcessorFolder:
    """The files of a Qwen2VLProcessor (the tokenizer and Qwen/Qwen-Image-Edit's
    preprocessor_config.json), written without instantiating the class: transformers builds
    it only with torchvision (for its video processor)."""

    def save_pretrained(self, folder) -> None:
        tokenizers.qwen2_tokenizer().save_pretrained(folder)
        image_processor = dict(
            do_convert_rgb=True, do_normalize=True, do_rescale=True, do_resize=True, image_mean=CLIP_MEAN,
            image_std=CLIP_STD, image_processor_type="Qwen2VLImageProcessor", processor_class="Qwen2VLProcessor",
            resample=3, rescale_factor=1 / 255, min_pixels=3136, max_pixels=12845056, merge_size=2,
            patch_size=VISION_PATCH, temporal_patch_size=2, size={"longest_edge": 12845056, "shortest_edge": 3136},
        )
        JsonFiles({"preprocessor_config.json": image_processor}).save_pretrained(folder)


def edit_spec(family: str, preset: str) -> PipelineSpec:
    return pipeline_spec(preset, EDIT_PIPELINES[family], zero_cond_t=family in ZERO_COND_T)


def pipeline_spec(preset: str, class_name: str = "QwenImagePipeline", zero_cond_t: bool = False) -> PipelineSpec:
    qwen = _text_encoder(preset)
    transformer = transformer_config(preset, text_dim=qwen[0].config["text_config"]["hidden_size"],
                                     zero_cond_t=zero_cond_t)
    others = {}
    if class_name != "QwenImagePipeline":
        others["processor"] = Asset("transformers", "Qwen2VLProcessor", _Qwen2VLProcessorFolder)
    return dit_pipeline(
        class_name,
        qwen_image_scheduler(),
        [qwen],
        Weights("diffusers", "QwenImageTransformer2DModel", transformer),
        Weights("diffusers", "AutoencoderKLQwenImage", wan_vae_config(preset)),
        **others,
    )


TINY_SAMPLING = dict(height=64, width=64, num_inference_steps=2)
