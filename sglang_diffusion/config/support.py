"""Options that are parsed and validated but whose capability has not landed yet.

Using one fails with a clear error instead of being ignored. Each entry leaves this list
when its capability lands.
"""

from __future__ import annotations

from sglang_diffusion.config.families import FAMILIES
from sglang_diffusion.config.server_args import ServerArgs
from sglang_diffusion.errors import ConfigError, NotSupportedYetError


def parallel_options(args: ServerArgs) -> list[str]:
    """The multi-rank options that split a request (native pipelines only)."""
    sp, ulysses, ring = args.sp_layout
    found = []
    if sp > 1:
        found.append(f"sequence parallelism (sp_degree={sp}, ulysses_degree={ulysses}, ring_degree={ring})")
    if args.enable_cfg_parallel:
        found.append("enable_cfg_parallel (CFG parallelism)")
    if args.tp_size > 1:
        found.append(f"tp_size={args.tp_size} (tensor-parallel text encoders)")
    return found


def unsupported_options(args: ServerArgs) -> list[str]:
    return []


def sliding_tiles_requested(args: ServerArgs) -> bool:
    return args.attention_backend == "sliding_tile_attn" or bool(args.mask_strategy_file_path)


def check_supported(args: ServerArgs) -> None:
    found = unsupported_options(args)
    if found:
        raise NotSupportedYetError("not supported yet: " + "; ".join(found))
    if sliding_tiles_requested(args) and args.sp_layout[2] > 1:
        raise ConfigError(f"sliding tile attention with ring_degree={args.sp_layout[2]}: ring attention splits the "
                          "keys across ranks, not by tile windows; use ulysses_degree for sequence parallelism")


def check_pipeline_supported(args: ServerArgs, pipeline) -> None:
    """What only the built pipeline can tell (backend auto picks it): options its backend lacks."""
    backend = pipeline.describe()["backend"]
    split = parallel_options(args)
    if split and backend != "sglang":
        raise NotSupportedYetError(f"not supported yet: {'; '.join(split)} on the {backend} backend (native pipelines "
                                   "split a request across ranks; here --num-gpus alone runs the whole request on "
                                   "every rank)")
    if args.vae_sp and backend != "sglang":
        raise ConfigError(f"vae_sp splits VAE decoding across the sequence-parallel ranks of native pipelines only, "
                          f"not on the {backend} backend: drop --vae-sp (or use --backend sglang where the model "
                          "has a native pipeline)")
    if sliding_tiles_requested(args):
        family = FAMILIES.get(pipeline.describe().get("family") or "")
        if family is not None and not family.is_video:
            raise ConfigError(f"sliding tile attention (attention_backend sliding_tile_attn / mask_strategy_file_path) "
                              f"tiles a video's frames x height x width token grid; {family.name} is an image model: "
                              "use another attention backend")
        if backend != "sglang":
            raise NotSupportedYetError(f"not supported yet: sliding tile attention on the {backend} backend (it runs in "
                                       "the native Wan and HunyuanVideo pipelines: --backend sglang)")
    if args.lora_path and getattr(pipeline, "lora", None) is None:
        raise NotSupportedYetError(f"not supported yet: lora_path on the {pipeline.describe()['backend']} backend "
                                   "(LoRA adapters run on the diffusers backend: --backend diffusers)")
