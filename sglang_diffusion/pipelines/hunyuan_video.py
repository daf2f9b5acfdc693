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

from sglang_diffusion.config.server_args import ServerArgs
from sglang_diffusion.errors import ConfigError
from sglang_diffusion.layers.conv import use_onednn_conv3d
from sglang_diffusion.loader.components import load_component
from sglang_diffusion.loader.resolve import ModelIndex
from sglang_diffusion.pipelines.native import (load_native_transformer, native_pipeline, prepare_dit,
                                              video_pipeline_start)
from sglang_diffusion.pipelines.stages.base import GenerationState, StagedPipeline
from sglang_diffusion.pipelines.stages.decoding import DecodingStage
from sglang_diffusion.pipelines.stages.denoising import CfgLayout, DenoisingStage
from sglang_diffusion.pipelines.stages.hunyuan_prompt import HunyuanPromptEncodingStage
from sglang_diffusion.pipelines.stages.latents import LatentPreparationStage
from sglang_diffusion.pipelines.stages.timesteps import TimestepPreparationStage
from sglang_diffusion.pipelines.stages.validation import InputValidationStage
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


class LinearSigmasTimestepStage(TimestepPreparationStage):
    """diffusers' HunyuanVideo schedule: sigmas evenly spaced from 1 down to 1/n, which the
    flow-match scheduler shifts by its `shift` (7 for HunyuanVideo; FastHunyuan's own)."""

    def describe(self) -> str:
        return f"{self.name}({type(self.scheduler).__name__}, shift {self.scheduler.config.get('shift', 1.0):g})"

    def __call__(self, state: GenerationState) -> None:
        n = state.params.num_inference_steps
        self.shift.apply(self.scheduler, state.params.flow_shift)
        self.scheduler.set_timesteps(sigmas=np.linspace(1.0, 0.0, n + 1)[:-1], device=state.device)
        self.scheduler.set_begin_index(0)
        state.timesteps = self.scheduler.timesteps


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
    from sglang_diffusion.models.dits.hunyuan_video import HunyuanVideoTransformer3DModel

    family, dtypes, groups, vae, vae_sp, scheduler = video_pipeline_start(args, index, platform)
    if groups.tp.size > 1:
        raise ConfigError("tp_size > 1: the native HunyuanVideo pipeline does not split its Llama text encoder "
                          "(use tp_size 1; sp_size splits the DiT)")
    device = platform.device
    dit_dtype = dtypes["transformer"]
    if platform.is_cpu:
        use_onednn_conv3d(vae)
    if args.text_encoder_cpu_offload and platform.is_cpu:
        logger.info("text_encoder_cpu_offload: the device is the CPU, so the text encoders already run from "
                    "host memory")
    text_encoder, offload = _text_encoder("text_encoder", index, args, dtypes["text_encoder"], platform)
    text_encoder_2, offload_2 = _text_encoder("text_encoder_2", index, args, dtypes["text_encoder_2"], platform)

    dit = load_native_transformer(HunyuanVideoTransformer3DModel, args, index, dit_dtype, device)
    config = dit.config
    backend = prepare_dit(dit, args, platform, dit_dtype, ring=groups.ring.size > 1)
    if platform.is_cpu:
        use_onednn_conv3d(dit)  # the patch embedding

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
    return native_pipeline(args, index, family, stages, device, backend, dit_dtype, groups, dit)
