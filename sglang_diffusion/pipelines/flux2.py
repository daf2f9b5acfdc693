"""FLUX.2 native pipeline (diffusers' `Flux2Pipeline` folders: FLUX.2-dev), text to image and
image editing with one or more reference images.

    validate -> encode prompt (Mistral 3 hidden states, FLUX.2 chat format) -> prepare latents
             [-> reference images (VAE latents, batch-norm normalised)] -> timesteps (FLUX.2's
             empirical shift) -> denoise -> decode (batch-norm statistics, unpatchify)

The latents are the 2x2-patchified ones, [B, 128, 1, H/16, W/16]; `guidance_scale` is the
distilled guidance embedding (no second pass). The tokenizer folder is a PixtralProcessor,
which transformers builds only with torchvision: without it the loader takes its tokenizer,
all a text prompt needs.
"""

from __future__ import annotations

from sglang_diffusion.config.server_args import ServerArgs
from sglang_diffusion.loader.components import load_component
from sglang_diffusion.loader.resolve import ModelIndex
from sglang_diffusion.pipelines.native import (image_pipeline_start, load_native_transformer, native_pipeline,
                                              prepare_dit)
from sglang_diffusion.pipelines.stages.base import StagedPipeline
from sglang_diffusion.pipelines.stages.conditioning import GuidedText
from sglang_diffusion.pipelines.stages.decoding import DecodingStage
from sglang_diffusion.pipelines.stages.denoising import CfgLayout, DenoisingStage
from sglang_diffusion.pipelines.stages.flux2 import Flux2PromptEncodingStage, Flux2ReferenceImageStage
from sglang_diffusion.pipelines.stages.latents import LatentPreparationStage
from sglang_diffusion.pipelines.stages.timesteps import FlowShiftTimestepStage
from sglang_diffusion.pipelines.stages.validation import InputValidationStage
from sglang_diffusion.platform import Platform


def build_flux2_pipeline(args: ServerArgs, index: ModelIndex, platform: Platform,
                         cfg_layout: str = "auto") -> StagedPipeline:
    from sglang_diffusion.models.dits.flux2 import Flux2Transformer2DModel

    family, dtypes, groups, vae, scheduler = image_pipeline_start(args, index, platform, "FLUX.2")
    device = platform.device
    dit_dtype = dtypes["transformer"]
    tokenizer = load_component("tokenizer", index, args, None)
    text_encoder = load_component("text_encoder", index, args, dtypes["text_encoder"]).to(device).eval()
    dit = load_native_transformer(Flux2Transformer2DModel, args, index, dit_dtype, device)
    backend = prepare_dit(dit, args, platform, dit_dtype, ring=groups.ring.size > 1)

    spatial_stride = 2 ** (len(vae.config.block_out_channels) - 1)
    multiple = 2 * spatial_stride  # the latents are 2x2-patchified
    patch = (1, *Flux2Transformer2DModel.patch_size)  # latent elements per token: (frames, rows, columns)
    stages = [
        InputValidationStage(family, temporal_stride=1, spatial_multiple=(multiple, multiple), image="optional",
                             true_cfg=True, cfg_scale="true_cfg_scale"),
        Flux2PromptEncodingStage(tokenizer, text_encoder, dtype=dit_dtype),
        LatentPreparationStage(dit.config.in_channels, 1, multiple, conditioning=GuidedText),
        Flux2ReferenceImageStage(vae, spatial_stride),
        FlowShiftTimestepStage(scheduler, patch, empirical_mu=True),
        DenoisingStage([dit], scheduler, cfg=CfgLayout(cfg_layout), cfg_scale="true_cfg_scale",
                       parallel=groups if groups.layout.world_size > 1 else None,
                       patch=patch),
        DecodingStage(vae),
    ]
    return native_pipeline(args, index, family, stages, device, backend, dit_dtype, groups, dit)
