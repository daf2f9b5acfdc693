"""Wan 2.1 / 2.2 native pipelines: T2V, I2V, T2V-A14B (two experts) and TI2V-5B.

One builder serves diffusers' `WanPipeline` and `WanImageToVideoPipeline` folders; what
differs between the variants is read from the folder (model_index.json's boundary_ratio and
expand_timesteps, the components present, the DiT's config), and shows as a different list of
stages:

    validate -> encode text [-> encode image (CLIP)] -> prepare latents [-> image latents]
             -> timesteps -> denoise (1 or 2 experts) -> decode
"""

from __future__ import annotations

import logging

import torch

from sglang_diffusion.config.families import detect_family
from sglang_diffusion.config.server_args import ServerArgs
from sglang_diffusion.errors import ConfigError, ModelLoadError
from sglang_diffusion.layers.conv import use_onednn_conv3d
from sglang_diffusion.loader.components import component_dtypes, load_component
from sglang_diffusion.loader.resolve import ModelIndex, resolve_component_path
from sglang_diffusion.models.vaes import wan_decoder
from sglang_diffusion.models.vaes.wan import accelerate_wan_vae
from sglang_diffusion.pipelines.native import native_lora
from sglang_diffusion.pipelines.stages.base import StagedPipeline
from sglang_diffusion.pipelines.stages.decoding import DecodingStage, configure_vae
from sglang_diffusion.pipelines.stages.denoising import CfgLayout, DenoisingStage
from sglang_diffusion.pipelines.stages.image_encoding import ImageEncodingStage, ImageLatentStage
from sglang_diffusion.pipelines.stages.latents import LatentPreparationStage
from sglang_diffusion.pipelines.stages.text_encoding import TextEncodingStage
from sglang_diffusion.pipelines.stages.timesteps import TimestepPreparationStage
from sglang_diffusion.pipelines.stages.validation import InputValidationStage
from sglang_diffusion.platform import Platform

logger = logging.getLogger(__name__)

MAX_SEQUENCE_LENGTH = 512  # UMT5 tokens: what Wan's DiT was trained with


def load_wan_transformer(name: str, args: ServerArgs, index: ModelIndex, dtype: torch.dtype,
                         device: torch.device):
    from sglang_diffusion.models.dits.wan import WanTransformer3DModel

    folder = _component_folder(name, args, index)
    model = WanTransformer3DModel.from_pretrained(folder, dtype=dtype, device=device)
    logger.info("%s: native Wan DiT (%d layers, %d heads x %d, %s) from %s", name, model.config.num_layers,
                model.config.num_attention_heads, model.config.attention_head_dim,
                str(dtype).removeprefix("torch."), folder)
    return model


def load_wan_vae(args: ServerArgs, index: ModelIndex, dtype: torch.dtype, *, encodes: bool, sp_size: int):
    """Our decoder of AutoencoderKLWan (models/vaes/wan_decoder.py) when a decoder alone does the
    request's work: nothing to encode (text-to-video), no tiling, slicing or split across SP
    ranks, a folder it supports; else diffusers' class."""
    from sglang_diffusion.loader.weights import read_config

    simple = not (encodes or args.vae_tiling or args.vae_slicing or (args.vae_sp and sp_size > 1)
                  or "vae" in args.component_paths)
    if simple and wan_decoder.supports(read_config(index.path / "vae")):
        return wan_decoder.WanVAEDecoder.from_pretrained(index.path / "vae", dtype=dtype)
    return load_component("vae", index, args, dtype)


def _component_folder(name: str, args: ServerArgs, index: ModelIndex):
    override = args.component_paths.get(name)
    return resolve_component_path(name, override) if override else index.path / name


def build_wan_pipeline(args: ServerArgs, index: ModelIndex, platform: Platform,
                       cfg_layout: str = "auto") -> StagedPipeline:
    from sglang_diffusion.attention.selector import attention_request, select_attention_backend
    from sglang_diffusion.distributed.parallel_state import setup_parallel
    from sglang_diffusion.loader.weights import read_config

    family = detect_family(index.class_name, index.extras, index.path)
    device = platform.device
    dtypes = component_dtypes(args, index, platform)
    dit_dtype = dtypes["transformer"]
    # Several ranks: SP / CFG parallelism over the DiT (Ulysses needs whole heads), TP over the text encoder
    heads = read_config(_component_folder("transformer", args, index)).get("num_attention_heads")
    groups = setup_parallel(args, num_heads=heads)

    image_to_video = index.class_name == "WanImageToVideoPipeline"
    image_mode = "required" if image_to_video else ("optional" if index.extras.get("expand_timesteps") else "none")

    # Components: ours where loader.native (and, for the VAE, load_wan_vae) has one, else diffusers / transformers
    vae = load_wan_vae(args, index, dtypes["vae"], encodes=image_mode != "none", sp_size=groups.sp.size)
    vae = vae.to(device).eval()
    vae_sp = configure_vae(vae, args, sp_size=groups.sp.size)
    if platform.is_cpu and isinstance(vae, wan_decoder.WanVAEDecoder):
        vae.use_cpu_fast_paths()
    elif platform.is_cpu:
        accelerate_wan_vae(vae)
    scheduler = load_component("scheduler", index, args, None)
    tokenizer = load_component("tokenizer", index, args, None)
    text_encoder = load_component("text_encoder", index, args, dtypes["text_encoder"]).eval()
    if groups.tp.size > 1:  # split before it moves to the device: each rank holds its part only
        from sglang_diffusion.models.text_encoders.t5_tensor_parallel import shard_t5_encoder

        shard_t5_encoder(text_encoder, groups.tp)
    offload = None
    if args.text_encoder_cpu_offload and not platform.is_cpu:
        from sglang_diffusion.loader.offload import OffloadedModule

        offload = OffloadedModule(text_encoder, device, pin_memory=args.pin_cpu_memory, name="text_encoder")
    else:
        if args.text_encoder_cpu_offload:
            logger.info("text_encoder_cpu_offload: the device is the CPU, so the text encoder already runs "
                        "from host memory")
        text_encoder.to(device)

    # Our DiT(s); --lora-path is merged into them by the LoRA handle (native_lora)
    experts = [load_wan_transformer("transformer", args, index, dit_dtype, device)]
    if index.components.get("transformer_2", (None, None))[1] is not None:
        experts.append(load_wan_transformer("transformer_2", args, index, dtypes["transformer_2"], device))
    config = experts[0].config
    backend_name, backend_options = attention_request(args.attention_backend, args.attention_backend_config,
                                                      args.mask_strategy_file_path)
    backend = select_attention_backend(backend_name, device=device, dtype=dit_dtype,
                                       head_dim=config.attention_head_dim, config=backend_options)
    if groups.ring.size > 1:
        from sglang_diffusion.distributed.sharding import backend_for_ring

        backend = backend_for_ring(backend, args.attention_backend, lambda name: select_attention_backend(
            name, device=device, dtype=dit_dtype, head_dim=config.attention_head_dim,
            config=args.attention_backend_config))
    for expert in experts:
        expert.set_attention_backend(backend)
        if platform.is_cpu:
            use_onednn_conv3d(expert)  # the patch embedding
        if args.enable_torch_compile:
            for block in expert.blocks:
                block.compile()
    if args.enable_torch_compile:
        logger.info("torch.compile enabled for the DiT blocks (compiled on the first request)")

    boundary_ratio = index.extras.get("boundary_ratio")
    if boundary_ratio is not None and len(experts) < 2:
        raise ModelLoadError(f"{index.path}: boundary_ratio {boundary_ratio} needs a transformer_2")
    boundary = boundary_ratio * scheduler.config.num_train_timesteps if len(experts) > 1 else None
    expand_timesteps = bool(index.extras.get("expand_timesteps"))
    t_stride, s_stride = vae.config.scale_factor_temporal, vae.config.scale_factor_spatial
    patch = tuple(config.patch_size)
    if image_mode == "required" and not args.vae_config.load_encoder:
        raise ConfigError("vae_config.load_encoder=false: image-to-video needs the VAE encoder for its input image")

    stages = [
        InputValidationStage(family, temporal_stride=t_stride, spatial_multiple=(s_stride * patch[1],
                                                                                 s_stride * patch[2]),
                             image=image_mode, has_second_expert=len(experts) > 1),
        TextEncodingStage(tokenizer, text_encoder, dtype=dit_dtype, max_sequence_length=MAX_SEQUENCE_LENGTH,
                          offload=offload),
    ]
    if image_to_video and config.image_dim is not None:
        image_encoder = load_component("image_encoder", index, args, dtypes.get("image_encoder")).to(device).eval()
        image_processor = load_component("image_processor", index, args, None)
        stages.append(ImageEncodingStage(image_processor, image_encoder, dit_dtype))
    stages.append(LatentPreparationStage(vae.config.z_dim, t_stride, s_stride))
    if image_mode != "none":
        mode = "first_frame" if expand_timesteps else "concat"
        stages.append(ImageLatentStage(vae, mode, t_stride, s_stride, patch[1:]))
    stages += [
        TimestepPreparationStage(scheduler),
        DenoisingStage(experts, scheduler, boundary_timestep=boundary, cfg=CfgLayout(cfg_layout),
                       parallel=groups if groups.layout.world_size > 1 else None),
        DecodingStage(vae, sp=groups.sp if vae_sp else None),
    ]
    info = {"attention_backend": backend.name, "dit_dtype": str(dit_dtype).removeprefix("torch."),
            "experts": len(experts), "lora": args.lora_path, "parallel": groups.layout.describe()}
    names = ("transformer", "transformer_2")
    return StagedPipeline(index.class_name, family, stages, device, info=info,
                          lora=native_lora(args, index, dict(zip(names, experts))))
