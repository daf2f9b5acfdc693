"""Qwen-Image native pipelines: text to image (diffusers' `QwenImagePipeline` folders) and image
editing (`QwenImageEditPipeline`: one input image, `QwenImageEditPlusPipeline`: one or several).

    validate -> encode prompt (Qwen2.5-VL, the model's template [+ the input images])
             [-> reference latents of the input images] -> prepare latents
             -> timesteps (shifted by image tokens) -> denoise (true CFG) -> decode

The latents stay in the VAE's layout [B, 16, 1, H/8, W/8]; the DiT packs them into 2x2 patches.
True CFG (true_cfg_scale > 1 with a negative prompt, diffusers' name; guidance_scale is the
embedding of guidance-distilled variants, which Qwen-Image is not) rescales the guided prediction to the
conditional one's norm, per token, as diffusers does (`norm_rescaled_cfg`).
"""

from __future__ import annotations

import logging

import torch

from sglang_diffusion.config.families import detect_family
from sglang_diffusion.config.server_args import ServerArgs
from sglang_diffusion.errors import ConfigError
from sglang_diffusion.loader.components import component_dtypes, load_component
from sglang_diffusion.loader.resolve import ModelIndex, resolve_component_path
from sglang_diffusion.models.vaes.wan import accelerate_wan_vae
from sglang_diffusion.pipelines.native import native_lora
from sglang_diffusion.pipelines.native import dit_parallel_groups, native_lora, prepare_dit
from sglang_diffusion.pipelines.stages.base import StagedPipeline
from sglang_diffusion.pipelines.stages.decoding import DecodingStage, configure_vae
from sglang_diffusion.pipelines.stages.denoising import CfgLayout, DenoisingStage
from sglang_diffusion.pipelines.stages.latents import LatentPreparationStage
from sglang_diffusion.pipelines.stages.qwen_edit import (EDIT_PLUS_CONDITION_AREA, VAE_AREA, QwenReferenceLatentStage,
                                                         output_size)
from sglang_diffusion.pipelines.stages.qwen_prompt import QwenPromptEncodingStage
from sglang_diffusion.pipelines.stages.timesteps import FlowShiftTimestepStage
from sglang_diffusion.pipelines.stages.validation import InputValidationStage
from sglang_diffusion.platform import Platform

logger = logging.getLogger(__name__)

# pipeline class -> (prompt template, VL condition image area, the input image giving the default size)
EDIT_MODES = {
    "QwenImageEditPipeline": ("edit", VAE_AREA, 0),
    "QwenImageEditPlusPipeline": ("edit_plus", EDIT_PLUS_CONDITION_AREA, -1),
}


def norm_rescaled_cfg(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Qwen-Image's true CFG on predictions [B, C, 1, H, W]: uncond + scale (cond - uncond),
    rescaled per token to the norm of `cond` (the norm over the token's 2x2 patch of channels,
    the packed latent diffusers takes it over). A token that is zero in both (another SP rank's
    token) stays zero, not 0/0."""
    b, c, f, h, w = cond.shape
    combined = uncond + scale * (cond - uncond)

    def per_token(x: torch.Tensor) -> torch.Tensor:
        return x.view(b, c, f, h // 2, 2, w // 2, 2)  # [B, C, 1, h, 2, w, 2]

    norms = [torch.linalg.vector_norm(per_token(x), dim=(1, 4, 6), keepdim=True) for x in (cond, combined)]
    ratio = norms[0] / norms[1].clamp_min(torch.finfo(norms[1].dtype).tiny)
    return (per_token(combined) * ratio).view(b, c, f, h, w)


def load_qwen_image_transformer(args: ServerArgs, index: ModelIndex, dtype: torch.dtype, device: torch.device):
    from sglang_diffusion.models.dits.qwen_image import QwenImageTransformer2DModel

    override = args.component_paths.get("transformer")
    folder = resolve_component_path("transformer", override) if override else index.path / "transformer"
    model = QwenImageTransformer2DModel.from_pretrained(folder, dtype=dtype, device=device)
    c = model.config
    logger.info("transformer: native Qwen-Image DiT (%d layers, %d heads x %d, %s) from %s", c.num_layers,
                c.num_attention_heads, c.attention_head_dim, str(dtype).removeprefix("torch."), folder)
    return model


def build_qwen_image_pipeline(args: ServerArgs, index: ModelIndex, platform: Platform,
                              cfg_layout: str = "auto") -> StagedPipeline:
    family = detect_family(index.class_name, index.extras, index.path)
    device = platform.device
    dtypes = component_dtypes(args, index, platform)
    dit_dtype = dtypes["transformer"]
    groups = dit_parallel_groups(args, index, "Qwen-Image")

    vae = load_component("vae", index, args, dtypes["vae"]).to(device).eval()
    configure_vae(vae, args)
    if platform.is_cpu:
        accelerate_wan_vae(vae)  # the Qwen-Image VAE is Wan's code under other names
    scheduler = load_component("scheduler", index, args, None)
    tokenizer = load_component("tokenizer", index, args, None)
    text_encoder = load_component("text_encoder", index, args, dtypes["text_encoder"]).to(device).eval()

    dit = load_qwen_image_transformer(args, index, dit_dtype, device)
    config = dit.config
    backend = prepare_dit(dit, args, platform, dit_dtype, ring=groups.ring.size > 1)

    spatial_stride = 2 ** len(vae.config.temperal_downsample)
    patch = config.patch_size
    multiple = (spatial_stride * patch[1], spatial_stride * patch[2])
    edit = EDIT_MODES.get(index.class_name)
    if edit is None:
        stages = [
            InputValidationStage(family, temporal_stride=1, spatial_multiple=multiple, image="none", true_cfg=True,
                                 cfg_scale="true_cfg_scale", required=()),
            QwenPromptEncodingStage(tokenizer, text_encoder, dtype=dit_dtype),
        ]
    else:
        mode, condition_area, sized_by = edit
        if not args.vae_config.load_encoder:
            raise ConfigError("vae_config.load_encoder=false: image editing needs the VAE encoder for its input images")
        processor = load_component("processor", index, args, None)  # QwenVLProcessor without torchvision
        stages = [
            InputValidationStage(family, temporal_stride=1, spatial_multiple=multiple, image="required", true_cfg=True,
                                 cfg_scale="true_cfg_scale", size_from_image=output_size(sized_by), required=()),
            QwenPromptEncodingStage(tokenizer, text_encoder, dtype=dit_dtype, mode=mode, processor=processor,
                                    condition_area=condition_area),
            QwenReferenceLatentStage(vae, spatial_stride),
        ]
    stages += [
        LatentPreparationStage(config.latent_channels, 1, spatial_stride),
        FlowShiftTimestepStage(scheduler, patch),
        DenoisingStage([dit], scheduler, cfg=CfgLayout(cfg_layout), cfg_scale="true_cfg_scale",
                       parallel=groups if groups.layout.world_size > 1 else None, guidance=norm_rescaled_cfg),
        DecodingStage(vae),
    ]
    info = {"attention_backend": backend.name, "dit_dtype": str(dit_dtype).removeprefix("torch."),
            "lora": args.lora_path, "parallel": groups.layout.describe(), "image_input": edit is not None}
    return StagedPipeline(index.class_name, family, stages, device, info=info,
                          lora=native_lora(args, index, {"transformer": dit}))
