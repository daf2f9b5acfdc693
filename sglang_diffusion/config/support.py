"""Options that are parsed and validated but whose capability has not landed yet.

Using one fails with a clear error instead of being ignored. Each entry leaves this list
when its capability lands.
"""

from __future__ import annotations

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
    found = []
    if args.mask_strategy_file_path:
        found.append("mask_strategy_file_path (sliding-tile attention masks)")
    return found


def check_supported(args: ServerArgs) -> None:
    found = unsupported_options(args)
    if found:
        raise NotSupportedYetError("not supported yet: " + "; ".join(found))


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
    if args.lora_path and getattr(pipeline, "lora", None) is None:
        raise NotSupportedYetError(f"not supported yet: lora_path on the {pipeline.describe()['backend']} backend "
                                   "(LoRA adapters run on the diffusers backend: --backend diffusers)")
