"""FLUX.1 native pipeline (diffusers' `FluxPipeline` folders: FLUX.1-dev and -schnell; and
`FluxKontextPipeline` folders: FLUX.1 Kontext, editing one input image).

    validate -> encode text (CLIP pooled + T5) -> prepare latents [-> the Kontext input image
             (VAE latents packed as reference tokens)] -> timesteps (shifted by image tokens)
             -> denoise (true CFG with a negative prompt) -> decode

The latents stay in the VAE's layout [B, 16, 1, H/8, W/8]; the DiT packs them 2x2. FLUX.1-dev
embeds `guidance_scale` (a distilled guidance, no second pass); schnell has no guidance
embedding; `true_cfg_scale` > 1 with a negative prompt runs real classifier-free guidance, as
diffusers' FluxPipeline does.
"""

from __future__ import annotations

from sglang_diffusion.config.server_args import ServerArgs
from sglang_diffusion.loader.components import load_component
from sglang_diffusion.loader.resolve import ModelIndex
from sglang_diffusion.pipelines.native import (image_pipeline_start, load_native_transformer, native_pipeline,
                                              prepare_dit)
from sglang_diffusion.pipelines.stages.base import StagedPipeline
from sglang_diffusion.pipelines.stages.conditioning import PooledText
from sglang_diffusion.pipelines.stages.decoding import DecodingStage
from sglang_diffusion.pipelines.stages.denoising import CfgLayout, DenoisingStage
from sglang_diffusion.pipelines.stages.flux_kontext import KontextImageStage, KontextText
from sglang_diffusion.pipelines.stages.latents import LatentPreparationStage
from sglang_diffusion.pipelines.stages.text_encoding import PooledTextEncodingStage
from sglang_diffusion.pipelines.stages.timesteps import FlowShiftTimestepStage
from sglang_diffusion.pipelines.stages.validation import InputValidationStage
from sglang_diffusion.platform import Platform

MAX_SEQUENCE_LENGTH = 512  # T5 tokens: diffusers' FluxPipeline default


def build_flux_pipeline(args: ServerArgs, index: ModelIndex, platform: Platform,
                        cfg_layout: str = "auto") -> StagedPipeline:
    from sglang_diffusion.models.dits.flux import FluxTransformer2DModel

    family, dtypes, groups, vae, scheduler = image_pipeline_start(args, index, platform, "FLUX.1")
    device = platform.device
    dit_dtype = dtypes["transformer"]
    encoders = [load_component(name, index, args, dtypes[name]).to(device).eval()
                for name in ("text_encoder", "text_encoder_2")]
    tokenizers = [load_component(name, index, args, None) for name in ("tokenizer", "tokenizer_2")]
    dit = load_native_transformer(FluxTransformer2DModel, args, index, dit_dtype, device)
    backend = prepare_dit(dit, args, platform, dit_dtype, ring=groups.ring.size > 1)

    spatial_stride = 2 ** (len(vae.config.block_out_channels) - 1)
    multiple = 2 * spatial_stride  # the DiT packs 2x2 latents
    patch = (1, *FluxTransformer2DModel.patch_size)  # latent elements per token: (frames, rows, columns)
    kontext = index.class_name == "FluxKontextPipeline"
    stages = [
        InputValidationStage(family, temporal_stride=1, spatial_multiple=(multiple, multiple),
                             image="optional" if kontext else "none", true_cfg=True, cfg_scale="true_cfg_scale"),
        PooledTextEncodingStage(tokenizers[0], encoders[0], tokenizers[1], encoders[1], dtype=dit_dtype,
                                max_sequence_length=MAX_SEQUENCE_LENGTH),
        LatentPreparationStage(vae.config.latent_channels, 1, spatial_stride,
                               conditioning=KontextText if kontext else PooledText),
        *([KontextImageStage(vae, spatial_stride)] if kontext else []),
        FlowShiftTimestepStage(scheduler, patch),
        DenoisingStage([dit], scheduler, cfg=CfgLayout(cfg_layout), cfg_scale="true_cfg_scale",
                       parallel=groups if groups.layout.world_size > 1 else None,
                       patch=patch),
        DecodingStage(vae),
    ]
    return native_pipeline(args, index, family, stages, device, backend, dit_dtype, groups, dit)
