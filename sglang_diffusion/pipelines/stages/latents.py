"""Latent preparation: the initial noise, drawn exactly as diffusers draws it (one CPU generator
seeded with the request's seed, fp32, shape [B, C, (F - 1) / 4 + 1, H / 8, W / 8]), so that the
same seed gives the same video on either backend."""

from __future__ import annotations

import torch

from sglang_diffusion.pipelines.stages.base import GenerationState, Stage
from sglang_diffusion.pipelines.stages.conditioning import TextOnly


class LatentPreparationStage(Stage):
    name = "latent_preparation"
    reads = ("params", "generator")
    writes = ("latents", "conditioning")

    def __init__(self, channels: int, temporal_stride: int, spatial_stride: int, conditioning=TextOnly):
        """`conditioning`: the stages.conditioning class of a text-only request (TextOnly, PooledText)."""
        self.channels, self.temporal_stride, self.spatial_stride = channels, temporal_stride, spatial_stride
        self.conditioning = conditioning

    def __call__(self, state: GenerationState) -> None:
        p = state.params
        shape = (state.batch_size, self.channels, (p.num_frames - 1) // self.temporal_stride + 1,
                 p.height // self.spatial_stride, p.width // self.spatial_stride)
        noise = torch.randn(shape, generator=state.generator, dtype=torch.float32, device="cpu")
        state.latents = noise.to(state.device)
        state.conditioning = self.conditioning()
