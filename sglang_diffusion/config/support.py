"""Options that are parsed and validated but whose capability has not landed yet.

Using one fails with a clear error instead of being ignored. Each entry leaves this list
when its capability lands.
"""

from __future__ import annotations

from sglang_diffusion.config.server_args import ServerArgs
from sglang_diffusion.errors import NotSupportedYetError


def unsupported_options(args: ServerArgs) -> list[str]:
    sp, ulysses, ring = args.sp_layout
    found = []
    if sp > 1:
        found.append(f"sequence parallelism (sp_degree={sp}, ulysses_degree={ulysses}, ring_degree={ring})")
    if args.enable_cfg_parallel:
        found.append("enable_cfg_parallel (CFG parallelism)")
    if args.tp_size > 1:
        found.append(f"tp_size={args.tp_size} (tensor-parallel text encoders)")
    if args.vae_sp:
        found.append("vae_sp (sequence-parallel VAE decoding)")
    if args.mask_strategy_file_path:
        found.append("mask_strategy_file_path (sliding-tile attention masks)")
    if args.attention_backend_config:
        found.append("attention_backend_config (options of native attention backends)")
    if args.lora_path:
        found.append("lora_path (LoRA adapters)")
    if args.cache_dit_config:
        found.append("cache_dit_config (Cache-DiT)")
    return found


def check_supported(args: ServerArgs) -> None:
    found = unsupported_options(args)
    if found:
        raise NotSupportedYetError("not supported yet: " + "; ".join(found))
