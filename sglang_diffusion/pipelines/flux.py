"""FLUX.1 native pipeline (diffusers' `FluxPipeline` folders: FLUX.1-dev and -schnell).

    validate -> encode text (CLIP pooled + T5) -> prepare latents -> timesteps (shifted by
             image tokens) -> denoise (true CFG with a negative prompt) -> decode

The latents stay in the VAE's layout [B, 16, 1, H/8, W/8]; the DiT packs them 2x2. FLUX.1-dev
embeds `guidance_scale` (a distilled guidance, no second pass); schnell has no guidance
embedding; `true_cfg_scale` > 1 with a negative prompt runs real classifier-free guidance, as
diffusers' FluxPipeline does.
"""

from __future__ import annotations

import logging

import torch

from sglang_diffusion.config.families import detect_family
from sglang_diffusion.config.server_args import ServerArgs
from sglang_diffusion.errors import ConfigError, ModelLoadError
from sglang_diffusion.loader.components import component_dtypes, load_component
from sglang_diffusion.loader.resolve import ModelIndex, resolve_component_path
from sglang_diffusion.pipelines.stages.base import StagedPipeline
from sglang_diffusion.pipelines.stages.conditioning import PooledText
from sglang_diffusion.pipelines.stages.decoding import DecodingStage, configure_vae
from sglang_diffusion.pipelines.stages.denoising import CfgLayout, DenoisingStage
from sglang_diffusion.pipelines.stages.latents import LatentPreparationStage
from sglang_diffusion.pipelines.stages.text_encoding import PooledTextEncodingStage
from sglang_diffusion.pipelines.stages.timesteps import FlowShiftTimestepStage
from sglang_diffusion.pipelines.stages.validation import InputValidationStage
from sglang_diffusion.platform import Platform

logger = logging.getLogger(__name__)

MAX_SEQUENCE_LENGTH = 512  # T5 tokens: diffusers' FluxPipeline default


def load_flux_transformer(cls, args: ServerArgs, index: ModelIndex, dtype: torch.dtype, device: torch.device):
    """`cls` (our FLUX.1 or FLUX.2 DiT) from the transformer folder or its override, with
    --lora-path merged into its weights."""
    override = args.component_paths.get("transformer")
    folder = resolve_component_path("transformer", override) if override else index.path / "transformer"
    state_edit = None
    if args.lora_path:
        from sglang_diffusion.loader.lora_merge import merge_lora, read_lora

        lora = read_lora(args.lora_path)

        def state_edit(state):
            merged = merge_lora(state, lora, component="transformer")
            logger.info("LoRA %r merged into the transformer: %d layers", args.lora_nickname, merged)
            if merged == 0:
                raise ModelLoadError(f"lora_path {args.lora_path!r}: none of its weights match a layer of the "
                                     "transformer")
            return state

    model = cls.from_pretrained(folder, dtype=dtype, device=device, state_edit=state_edit)
    c = model.config
    logger.info("transformer: native %s (%d double- + %d single-stream blocks, %d heads x %d, %s) from %s",
                cls.__name__, c.num_layers, c.num_single_layers, c.num_attention_heads, c.attention_head_dim,
                str(dtype).removeprefix("torch."), folder)
    return model


def prepare_dit(dit, args: ServerArgs, platform: Platform, dtype: torch.dtype):
    """The attention backend (logged by the selector) and torch.compile of the blocks."""
    from sglang_diffusion.attention.selector import select_attention_backend

    backend = select_attention_backend(args.attention_backend, device=platform.device, dtype=dtype,
                                       head_dim=dit.config.attention_head_dim, config=args.attention_backend_config)
    dit.set_attention_backend(backend)
    if args.enable_torch_compile:
        for block in (*dit.transformer_blocks, *dit.single_transformer_blocks):
            block.compile()
        logger.info("torch.compile enabled for the DiT blocks (compiled on the first request)")
    return backend


def build_flux_pipeline(args: ServerArgs, index: ModelIndex, platform: Platform,
                        cfg_layout: str = "auto") -> StagedPipeline:
    from sglang_diffusion.distributed.parallel_state import setup_parallel
    from sglang_diffusion.models.dits.flux import FluxTransformer2DModel
    from sglang_diffusion.pipelines.wan import NativeLora

    family = detect_family(index.class_name, index.extras)
    device = platform.device
    dtypes = component_dtypes(args, index, platform)
    dit_dtype = dtypes["transformer"]
    groups = setup_parallel(args, sequence_parallel=False)
    if groups.sp.size > 1 or groups.tp.size > 1:
        raise ConfigError("the native FLUX.1 pipeline runs CFG parallelism only (cfg_parallel, with true CFG); "
                          "ulysses_degree / ring_degree / tp_size need --backend diffusers")

    vae = load_component("vae", index, args, dtypes["vae"]).to(device).eval()
    configure_vae(vae, args)
    scheduler = load_component("scheduler", index, args, None)
    encoders = [load_component(name, index, args, dtypes[name]).to(device).eval()
                for name in ("text_encoder", "text_encoder_2")]
    tokenizers = [load_component(name, index, args, None) for name in ("tokenizer", "tokenizer_2")]
    dit = load_flux_transformer(FluxTransformer2DModel, args, index, dit_dtype, device)
    backend = prepare_dit(dit, args, platform, dit_dtype)

    spatial_stride = 2 ** (len(vae.config.block_out_channels) - 1)
    multiple = 2 * spatial_stride  # the DiT packs 2x2 latents
    stages = [
        InputValidationStage(family, temporal_stride=1, spatial_multiple=(multiple, multiple), image="none",
                             true_cfg=True, cfg_scale="true_cfg_scale"),
        PooledTextEncodingStage(tokenizers[0], encoders[0], tokenizers[1], encoders[1], dtype=dit_dtype,
                                max_sequence_length=MAX_SEQUENCE_LENGTH),
        LatentPreparationStage(vae.config.latent_channels, 1, spatial_stride, conditioning=PooledText),
        FlowShiftTimestepStage(scheduler, (1, *FluxTransformer2DModel.patch_size)),
        DenoisingStage([dit], scheduler, cfg=CfgLayout(cfg_layout), cfg_scale="true_cfg_scale",
                       parallel=groups if groups.layout.world_size > 1 else None),
        DecodingStage(vae),
    ]
    info = {"attention_backend": backend.name, "dit_dtype": str(dit_dtype).removeprefix("torch."),
            "lora": args.lora_path, "parallel": groups.layout.describe()}
    return StagedPipeline(index.class_name, family, stages, device, info=info,
                          lora=NativeLora(args) if args.lora_path else None)
