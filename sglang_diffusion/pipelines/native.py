"""What the native pipeline builders share around their stages: the DiT loaded from its folder,
its attention backend and torch.compile, the parallel groups (SP and
CFG over the DiT) and the first components, and the StagedPipeline with its info and its
run-time LoRA handle (--lora-path merged at start-up)."""

from __future__ import annotations

import logging

import torch

from sglang_diffusion.config.server_args import ServerArgs
from sglang_diffusion.errors import ConfigError
from sglang_diffusion.loader.resolve import ModelIndex, component_folder
from sglang_diffusion.pipelines.stages.base import StagedPipeline
from sglang_diffusion.platform import Platform

logger = logging.getLogger(__name__)


def load_native_transformer(cls, args: ServerArgs, index: ModelIndex, dtype: torch.dtype, device: torch.device):
    """`cls` (one of our dual- + single-stream DiTs) from the transformer folder or its override."""
    folder = component_folder("transformer", args, index)
    model = cls.from_pretrained(folder, dtype=dtype, device=device)
    c = model.config
    logger.info("transformer: native %s (%d double- + %d single-stream blocks, %d heads x %d, %s) from %s",
                cls.__name__, c.num_layers, c.num_single_layers, c.num_attention_heads, c.attention_head_dim,
                str(dtype).removeprefix("torch."), folder)
    return model


def prepare_dit(dit, args: ServerArgs, platform: Platform, dtype: torch.dtype, ring: bool = False):
    """The attention backend (logged by the selector; `ring`: one that ring attention can run;
    --mask-strategy-file-path selects sliding_tile_attn) and torch.compile of the blocks."""
    from sglang_diffusion.attention.selector import attention_request, select_attention_backend

    def select(name, config=args.attention_backend_config):
        return select_attention_backend(name, device=platform.device, dtype=dtype,
                                        head_dim=dit.config.attention_head_dim, config=config)

    backend = select(*attention_request(args.attention_backend, args.attention_backend_config,
                                        args.mask_strategy_file_path))
    if ring:
        from sglang_diffusion.distributed.sharding import backend_for_ring

        backend = backend_for_ring(backend, args.attention_backend, select)
    dit.set_attention_backend(backend)
    if args.enable_torch_compile:  # (Qwen-Image has dual-stream blocks only)
        for block in (*dit.transformer_blocks, *getattr(dit, "single_transformer_blocks", ())):
            block.compile()
        logger.info("torch.compile enabled for the DiT blocks (compiled on the first request)")
    return backend


def dit_parallel_groups(args: ServerArgs, index: ModelIndex, model: str | None = None):
    """The parallel groups of a native pipeline: SP (Ulysses needs whole heads, read from the
    transformer's config.json) and CFG over the DiT, TP for the text encoder. `model`: an image
    family, whose text encoders have no tensor parallelism."""
    from sglang_diffusion.distributed.parallel_state import setup_parallel
    from sglang_diffusion.loader.weights import read_config

    heads = read_config(component_folder("transformer", args, index)).get("num_attention_heads")
    groups = setup_parallel(args, num_heads=heads)
    if model is not None and groups.tp.size > 1:
        raise ConfigError(f"the native {model} pipeline splits its DiT (ulysses_degree / ring_degree / "
                          "cfg_parallel), not its text encoders: tp_size needs --backend diffusers")
    return groups


def _first_components(args: ServerArgs, index: ModelIndex, platform: Platform, groups):
    """(family, component dtypes, the VAE on the device with --vae-tiling / slicing / sp set,
    whether the SP ranks split its decoding, the scheduler)."""
    from sglang_diffusion.config.families import detect_family
    from sglang_diffusion.loader.components import component_dtypes, load_component
    from sglang_diffusion.pipelines.stages.decoding import configure_vae

    family = detect_family(index.class_name, index.extras, index.path)
    dtypes = component_dtypes(args, index, platform)
    vae = load_component("vae", index, args, dtypes["vae"]).to(platform.device).eval()
    vae_sp = configure_vae(vae, args, sp_size=groups.sp.size)
    return family, dtypes, vae, vae_sp, load_component("scheduler", index, args, None)


def image_pipeline_start(args: ServerArgs, index: ModelIndex, platform: Platform, model: str):
    """What an image family's builder starts with: (family, component dtypes, the parallel
    groups (`dit_parallel_groups`), the VAE on the device with --vae-tiling / slicing set and
    channels-last on a CPU, the scheduler)."""
    groups = dit_parallel_groups(args, index, model)
    family, dtypes, vae, _, scheduler = _first_components(args, index, platform, groups)
    if platform.is_cpu:  # Conv2d weights in oneDNN's own layout (NHWC, the activations follow):
        vae.to(memory_format=torch.channels_last)  # no reorder per call; small FLUX.1 decode 15% faster
    return family, dtypes, groups, vae, scheduler


def video_pipeline_start(args: ServerArgs, index: ModelIndex, platform: Platform):
    """What a video family's builder starts with: (family, component dtypes, the parallel groups
    (SP / CFG over the DiT: Ulysses needs whole heads, read from the transformer's config.json;
    TP), the VAE on the device, whether the SP ranks split its decoding, the scheduler)."""
    groups = dit_parallel_groups(args, index)
    family, dtypes, vae, vae_sp, scheduler = _first_components(args, index, platform, groups)
    return family, dtypes, groups, vae, vae_sp, scheduler


def native_lora(args: ServerArgs, index: ModelIndex, dits: dict):
    """The run-time LoRA handle of a native pipeline's DiTs (component name -> our DiT), with
    --lora-path merged at --lora-scale (target all)."""
    from sglang_diffusion.loader.lora import LoraSpec
    from sglang_diffusion.loader.lora_native import NativeLoraManager

    manager = NativeLoraManager({name: (dit, component_folder(name, args, index)) for name, dit in dits.items()})
    if args.lora_path:
        manager.set([LoraSpec(args.lora_nickname, args.lora_path, strength=args.lora_scale)])
    return manager


def native_pipeline(args: ServerArgs, index: ModelIndex, family, stages: list, device: torch.device,
                    backend, dit_dtype: torch.dtype, groups, dit) -> StagedPipeline:
    """The StagedPipeline of a native builder over one DiT, with what `info` reports and its LoRA handle."""
    info = {"attention_backend": backend.name, "dit_dtype": str(dit_dtype).removeprefix("torch."),
            "lora": args.lora_path, "parallel": groups.layout.describe()}
    return StagedPipeline(index.class_name, family, stages, device, info=info,
                          lora=native_lora(args, index, {"transformer": dit}))
