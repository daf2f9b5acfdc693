"""Which pipeline runs a model: model_index.json's `_class_name` -> a native pipeline, else
(with backend auto or diffusers) the diffusers backend."""

from __future__ import annotations

import logging
from typing import Callable

from sglang_diffusion.config.server_args import ServerArgs
from sglang_diffusion.errors import ConfigError
from sglang_diffusion.loader.components import check_component_overrides
from sglang_diffusion.loader.fit import check_component_fit
from sglang_diffusion.loader.resolve import ModelIndex, read_model_index, resolve_model_path
from sglang_diffusion.pipelines.base import Pipeline
from sglang_diffusion.platform import Platform

logger = logging.getLogger(__name__)


def _wan(args: ServerArgs, index: ModelIndex, platform: Platform) -> Pipeline:
    from sglang_diffusion.pipelines.wan import build_wan_pipeline  # imported on use: torch models are heavy

    return build_wan_pipeline(args, index, platform)


def _flux(args: ServerArgs, index: ModelIndex, platform: Platform) -> Pipeline:
    from sglang_diffusion.pipelines.flux import build_flux_pipeline

    return build_flux_pipeline(args, index, platform)


def _flux2(args: ServerArgs, index: ModelIndex, platform: Platform) -> Pipeline:
    from sglang_diffusion.pipelines.flux2 import build_flux2_pipeline

    return build_flux2_pipeline(args, index, platform)


def _qwen_image(args: ServerArgs, index: ModelIndex, platform: Platform) -> Pipeline:
    from sglang_diffusion.pipelines.qwen_image import build_qwen_image_pipeline

    return build_qwen_image_pipeline(args, index, platform)


def _hunyuan_video(args: ServerArgs, index: ModelIndex, platform: Platform) -> Pipeline:
    from sglang_diffusion.pipelines.hunyuan_video import build_hunyuan_video_pipeline

    return build_hunyuan_video_pipeline(args, index, platform)


# model_index.json `_class_name` -> factory(args, index, platform) of our native pipeline.
# Native families register here as they land.
NATIVE_PIPELINES: dict[str, Callable[[ServerArgs, ModelIndex, Platform], Pipeline]] = {
    "WanPipeline": _wan,  # Wan2.1 T2V, Wan2.2 T2V-A14B and TI2V-5B
    "WanImageToVideoPipeline": _wan,  # Wan2.1 I2V (and Wan2.2 I2V-A14B)
    "FluxPipeline": _flux,  # FLUX.1-dev and -schnell
    "FluxKontextPipeline": _flux,  # FLUX.1 Kontext: editing one input image
    "Flux2Pipeline": _flux2,  # FLUX.2-dev, text to image and editing
    "HunyuanVideoPipeline": _hunyuan_video,  # HunyuanVideo, FastHunyuan
    "QwenImagePipeline": _qwen_image,
    "QwenImageEditPipeline": _qwen_image,
    "QwenImageEditPlusPipeline": _qwen_image,  # one or several input images
}


def build_pipeline(args: ServerArgs, platform: Platform) -> Pipeline:
    if not args.model_path:
        raise ConfigError("model_path is required (--model-path or the config key model_path)")
    index = read_model_index(resolve_model_path(args.model_path, args.revision))
    check_component_overrides(args.component_paths, index)
    check_component_fit(args.component_paths, index)  # before any weight is loaded
    native = NATIVE_PIPELINES.get(index.class_name)
    if args.backend == "sglang" and native is None:
        raise ConfigError(f"backend sglang: there is no native pipeline for {index.class_name} "
                          f"(native: {', '.join(sorted(NATIVE_PIPELINES)) or 'none yet'}); "
                          "use --backend auto or --backend diffusers")
    if args.backend == "diffusers" or native is None:
        from sglang_diffusion.pipelines.diffusers_backend import DiffusersBackendPipeline

        if args.backend == "auto":
            logger.info("no native pipeline for %s: running it on the diffusers backend", index.class_name)
        return DiffusersBackendPipeline(args, index, platform)
    logger.info("native pipeline for %s%s", index.class_name,
                " with Cache-DiT (our DBCache over the native DiT)" if args.cache_dit_enabled else "")
    pipeline = native(args, index, platform)
    if args.cache_dit_enabled:
        _enable_step_caching(pipeline, args)
    return pipeline


def _enable_step_caching(pipeline: Pipeline, args: ServerArgs) -> None:
    """Cache-DiT on every native family alike: its denoising stage runs the DiT's blocks through
    `sglang_diffusion.cache` for every request (a bad config file fails here, at start-up)."""
    from sglang_diffusion.cache import Caching, check_block_protocol
    from sglang_diffusion.pipelines.stages.denoising import DenoisingStage

    caching = Caching.from_args(args)
    for stage in getattr(pipeline, "stages", []):
        if isinstance(stage, DenoisingStage):
            check_block_protocol(stage.experts, "Cache-DiT")
            stage.caching = caching
            logger.info("step caching: %s", caching.describe())
