"""HunyuanVideo native pipeline (HunyuanVideo, FastHunyuan and other checkpoints of diffusers'
`HunyuanVideoPipeline` layout):

    validate (frames (n - 1) // 4 * 4 + 1, sizes multiples of 16) -> encode text (Llama template
    + CLIP pooled, embedded guidance) -> prepare latents -> timesteps (sigmas 1 .. 1/n, shifted)
    -> denoise -> decode (AutoencoderKLHunyuanVideo: tiling, slicing, vae_sp)

Guidance: HunyuanVideo checkpoints are guidance-distilled: `guidance_scale` goes into the DiT
as an embedding and each step runs one DiT pass. True classifier-free guidance runs, as in
diffusers, only with `true_cfg_scale` > 1 and a negative prompt (two branches a step, which CFG
parallelism splits over two ranks).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import torch

from sglang_diffusion.config.families import detect_family
from sglang_diffusion.config.server_args import ServerArgs
from sglang_diffusion.errors import ConfigError, ModelLoadError
from sglang_diffusion.layers.conv import use_onednn_conv3d
from sglang_diffusion.loader.components import component_dtypes, load_component
from sglang_diffusion.loader.resolve import ModelIndex, resolve_component_path
from sglang_diffusion.pipelines.stages.base import GenerationState, Stage, StagedPipeline
from sglang_diffusion.pipelines.stages.decoding import DecodingStage, configure_vae
from sglang_diffusion.pipelines.stages.denoising import CfgLayout, DenoisingStage
from sglang_diffusion.pipelines.stages.hunyuan_prompt import HunyuanPromptEncodingStage
from sglang_diffusion.pipelines.stages.latents import LatentPreparationStage
from sglang_diffusion.pipelines.stages.validation import InputValidationStage
from sglang_diffusion.pipelines.wan import NativeLora
from sglang_diffusion.platform import Platform

logger = logging.getLogger(__name__)


class HunyuanInputValidationStage(InputValidationStage):
    """The shared validation with true CFG (`true_cfg_scale`, with a negative prompt), and a
    frame count that is not 4k + 1 corrected to the one HunyuanVideo's VAE decodes for it,
    (n - 1) // 4 * 4 + 1 (diffusers makes the latents for n frames that way, silently)."""

    def __init__(self, family, **kwargs):
        super().__init__(family, true_cfg=True, cfg_scale="true_cfg_scale", **kwargs)

    def _corrected(self, p) -> dict:
        out = {}
        stride = self.temporal_stride
        frames = p.num_frames
        if frames % stride != 1 % stride:
            out["num_frames"] = frames = (frames - 1) // stride * stride + 1
            logger.warning("num_frames %d: this model makes %d k + 1 frames; using %d", p.num_frames, stride, frames)
        return {**out, **super()._corrected(dataclasses.replace(p, num_frames=frames))}


class LinearSigmasTimestepStage(Stage):
    """diffusers' HunyuanVideo schedule: sigmas evenly spaced from 1 down to 1/n, which the
    flow-match scheduler shifts by its `shift` (7 for HunyuanVideo; FastHunyuan's own)."""

    name = "timestep_preparation"
    reads = ("params",)
    writes = ("timesteps",)

    def __init__(self, scheduler):
        self.scheduler = scheduler

    def describe(self) -> str:
        return f"{self.name}({type(self.scheduler).__name__}, shift {self.scheduler.config.get('shift', 1.0):g})"

    def __call__(self, state: GenerationState) -> None:
        n = state.params.num_inference_steps
        self.scheduler.set_timesteps(sigmas=np.linspace(1.0, 0.0, n + 1)[:-1], device=state.device)
        self.scheduler.set_begin_index(0)
        state.timesteps = self.scheduler.timesteps


def _component_folder(name: str, args: ServerArgs, index: ModelIndex):
    override = args.component_paths.get(name)
    return resolve_component_path(name, override) if override else index.path / name


def load_hunyuan_transformer(args: ServerArgs, index: ModelIndex, dtype: torch.dtype, device: torch.device):
    """Our DiT from the transformer folder, with --lora-path merged into its checkpoint."""
    from sglang_diffusion.models.dits.hunyuan_video import HunyuanVideoTransformer3DModel

    def apply_lora(state):
        if args.lora_path:
            from sglang_diffusion.loader.lora_merge import merge_lora, read_lora

            merged = merge_lora(state, read_lora(args.lora_path), component="transformer")
            logger.info("LoRA %r merged into transformer: %d layers", args.lora_nickname, merged)
            if merged == 0:
                raise ModelLoadError(f"lora_path {args.lora_path!r}: none of its weights match a layer of "
                                     "the transformer")
        return state

    folder = _component_folder("transformer", args, index)
    model = HunyuanVideoTransformer3DModel.from_pretrained(folder, dtype=dtype, device=device, state_edit=apply_lora)
    c = model.config
    logger.info("transformer: native HunyuanVideo DiT (%d + %d blocks, %d heads x %d, %s) from %s", c.num_layers,
                c.num_single_layers, c.num_attention_heads, c.attention_head_dim, str(dtype).removeprefix("torch."),
                folder)
    return model


def _text_encoder(name: str, index: ModelIndex, args: ServerArgs, dtype: torch.dtype, platform: Platform):
    """An encoder on the device, or in host memory visiting it (--text-encoder-cpu-offload):
    (module, OffloadedModule or None)."""
    encoder = load_component(name, index, args, dtype).eval()
    if args.text_encoder_cpu_offload and not platform.is_cpu:
        from sglang_diffusion.loader.offload import OffloadedModule

        return encoder, OffloadedModule(encoder, platform.device, pin_memory=args.pin_cpu_memory, name=name)
    return encoder.to(platform.device), None


def build_hunyuan_video_pipeline(args: ServerArgs, index: ModelIndex, platform: Platform,
                                 cfg_layout: str = "auto") -> StagedPipeline:
    from sglang_diffusion.attention.selector import select_attention_backend
    from sglang_diffusion.distributed.parallel_state import setup_parallel
    from sglang_diffusion.loader.weights import read_config

    family = detect_family(index.class_name, index.extras)
    device = platform.device
    dtypes = component_dtypes(args, index, platform)
    dit_dtype = dtypes["transformer"]
    heads = read_config(_component_folder("transformer", args, index)).get("num_attention_heads")
    groups = setup_parallel(args, num_heads=heads)
    if groups.tp.size > 1:
        raise ConfigError("tp_size > 1: the native HunyuanVideo pipeline does not split its Llama text encoder "
                          "(use tp_size 1; sp_size splits the DiT)")

    vae = load_component("vae", index, args, dtypes["vae"]).to(device).eval()
    vae_sp = configure_vae(vae, args, sp_size=groups.sp.size)
    if platform.is_cpu:
        use_onednn_conv3d(vae)
    scheduler = load_component("scheduler", index, args, None)
    if args.text_encoder_cpu_offload and platform.is_cpu:
        logger.info("text_encoder_cpu_offload: the device is the CPU, so the text encoders already run from "
                    "host memory")
    text_encoder, offload = _text_encoder("text_encoder", index, args, dtypes["text_encoder"], platform)
    text_encoder_2, offload_2 = _text_encoder("text_encoder_2", index, args, dtypes["text_encoder_2"], platform)

    dit = load_hunyuan_transformer(args, index, dit_dtype, device)
    config = dit.config
    backend = select_attention_backend(args.attention_backend, device=device, dtype=dit_dtype,
                                       head_dim=config.attention_head_dim, config=args.attention_backend_config)
    if groups.ring.size > 1:
        from sglang_diffusion.distributed.sharding import backend_for_ring

        backend = backend_for_ring(backend, args.attention_backend, lambda name: select_attention_backend(
            name, device=device, dtype=dit_dtype, head_dim=config.attention_head_dim,
            config=args.attention_backend_config))
    dit.set_attention_backend(backend)
    if platform.is_cpu:
        use_onednn_conv3d(dit)  # the patch embedding
    if args.enable_torch_compile:
        for block in (*dit.transformer_blocks, *dit.single_transformer_blocks):
            block.compile()
        logger.info("torch.compile enabled for the DiT blocks (compiled on the first request)")

    t_stride, s_stride = vae.temporal_compression_ratio, vae.spatial_compression_ratio
    patch = config.patch_size
    stages = [
        HunyuanInputValidationStage(family, temporal_stride=t_stride,
                                    spatial_multiple=(s_stride * patch[1], s_stride * patch[2])),
        HunyuanPromptEncodingStage(load_component("tokenizer", index, args, None), text_encoder,
                                   load_component("tokenizer_2", index, args, None), text_encoder_2,
                                   dtype=dit_dtype, embedded_guidance=config.guidance_embeds,
                                   offload=(offload, offload_2)),
        LatentPreparationStage(config.in_channels, t_stride, s_stride),
        LinearSigmasTimestepStage(scheduler),
        DenoisingStage([dit], scheduler, cfg=CfgLayout(cfg_layout), cfg_scale="true_cfg_scale",
                       parallel=groups if groups.layout.world_size > 1 else None),
        DecodingStage(vae, sp=groups.sp if vae_sp else None),
    ]
    info = {"attention_backend": backend.name, "dit_dtype": str(dit_dtype).removeprefix("torch."),
            "lora": args.lora_path, "parallel": groups.layout.describe()}
    return StagedPipeline(index.class_name, family, stages, device, info=info,
                          lora=NativeLora(args) if args.lora_path else None)
