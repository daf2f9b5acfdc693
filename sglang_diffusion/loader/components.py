"""Loading single components: dtypes per component and `--<component>-path` overrides."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from sglang_diffusion.config.server_args import ServerArgs
from sglang_diffusion.errors import ConfigError, ModelLoadError
from sglang_diffusion.loader.native import native_loader
from sglang_diffusion.loader.resolve import ModelIndex, resolve_component_path
from sglang_diffusion.platform import Platform

logger = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def component_dtypes(args: ServerArgs, index: ModelIndex, platform: Platform) -> dict[str, torch.dtype]:
    """The dtype of every torch-module component, from the precision options.

    transformer* follow dit_precision, vae vae_precision, text_encoder* text_encoder_precisions
    in model_index order (default: fp32 on a CPU, bf16 on a GPU), anything else fp32.
    """
    encoders = index.text_encoders
    if len(args.text_encoder_precisions) > max(len(encoders), 1):
        raise ConfigError(f"text_encoder_precisions has {len(args.text_encoder_precisions)} entries but the "
                          f"model has {len(encoders)} text encoder(s): {', '.join(encoders) or 'none'}")
    out = {}
    for name, (library, cls) in index.components.items():
        if cls is None or library not in ("diffusers", "transformers"):
            continue
        if name.startswith("transformer"):
            precision = args.dit_precision or platform.default_precision
        elif name == "vae":
            precision = args.vae_precision
        elif name in encoders:
            i = encoders.index(name)
            precision = (args.text_encoder_precisions[i] if i < len(args.text_encoder_precisions)
                         else platform.default_precision)
        else:
            precision = "fp32"
        out[name] = platform.usable_dtype(DTYPES[precision], what=name)
    return out


def check_component_overrides(overrides, index: ModelIndex) -> None:
    """Every `--<component>-path` names a component of model_index.json, whichever backend runs it."""
    for name in overrides:
        if name not in index.components:
            valid = ", ".join(n for n, (_, c) in index.components.items() if c)
            raise ConfigError(f"--{name.replace('_', '-')}-path: the model has no component {name!r} in "
                              f"model_index.json (valid: {valid})")


def load_component_override(name: str, path: str, index: ModelIndex, dtype: torch.dtype | None,
                            trust_remote_code: bool = False):
    """Load `name` from `path` with the class its own config names, else model_index's class.

    A class of the folder's own code (config.json's `auto_map`) runs with `trust_remote_code`;
    without it, our native class of that name where we have one (FLUX.2's tiny autoencoder)."""
    check_component_overrides([name], index)
    folder = resolve_component_path(name, path)
    library, cls_name = index.components[name]
    remote = None
    config_file = next((folder / f for f in ("config.json", "scheduler_config.json") if (folder / f).is_file()),
                       None)
    if config_file is not None:
        config = json.loads(config_file.read_text())
        if "_class_name" in config:
            library, cls_name = "diffusers", config["_class_name"]
            remote = (config.get("auto_map") or {}).get("AutoModel")
    elif library in ("diffusers", "transformers") and cls_name and not _is_tokenizer_like(cls_name):
        raise ModelLoadError(f"component folder {folder} for {name!r} has no config.json; "
                             "it must be a complete component folder (config.json + safetensors)")
    load, source, is_module = _override_loader(name, folder, library, cls_name, remote, trust_remote_code)
    try:
        component = load(folder, **({"dtype": dtype} if dtype is not None and is_module else {}))
    except Exception as e:  # library loaders raise many classes for a bad folder
        raise ModelLoadError(f"cannot load component {name!r} ({cls_name}) from {folder}: {e}") from None
    logger.info("component %s replaced from %s (%s, %s)", name, path, cls_name, source)
    return _fit_to_pipeline(name, component, index)


def _override_loader(name: str, folder: Path, library: str | None, cls_name: str, remote: str | None,
                     trust_remote_code: bool):
    """(what loads an override folder, where its class comes from: the library, our native class
    or the folder's remote code, whether it is a torch module that takes a dtype)."""
    if remote and trust_remote_code:
        from diffusers import AutoModel

        def load(folder, **kwargs):  # AutoModel takes the folder as a str only (its load id joins strs)
            return AutoModel.from_pretrained(str(folder), trust_remote_code=True, **kwargs)

        return load, "remote code", True
    cls = _native_component_classes().get(cls_name)
    source = "native"
    if cls is None:
        cls, source = getattr(_import_library(library), cls_name, None), library
    if cls is None and remote:
        raise ConfigError(f"component {name!r}: {cls_name} is custom code in {folder} (auto_map {remote}); "
                          "pass --trust-remote-code to run it")
    if cls is None:
        raise ModelLoadError(f"component {name!r}: {library} has no class {cls_name!r}")
    return cls.from_pretrained, source, isinstance(cls, type) and issubclass(cls, torch.nn.Module)


def _native_component_classes() -> dict[str, type]:
    """Our own classes for components that diffusers does not ship, by config.json `_class_name`."""
    from sglang_diffusion.models.vaes.flux2_tiny import Flux2TinyAutoEncoder

    return {"Flux2TinyAutoEncoder": Flux2TinyAutoEncoder}


def _fit_to_pipeline(name: str, component, index: ModelIndex):
    """An override in the form the model's pipeline calls it: FLUX.2's tiny autoencoder behind
    AutoencoderKLFlux2's interface (both backends' Flux2Pipeline read its batch-norm statistics)."""
    if name == "vae" and index.class_name == "Flux2Pipeline":
        from sglang_diffusion.models.vaes.flux2_tiny import as_flux2_vae, is_packed_latent_autoencoder

        if is_packed_latent_autoencoder(component):
            logger.info("vae: %s decodes the DiT's packed latent directly (no batch-norm statistics, no "
                        "unpatchify)", type(component).__name__)
        return as_flux2_vae(component)
    return component


def load_component(name: str, index: ModelIndex, args: ServerArgs, dtype: torch.dtype | None):
    """Component `name` of the model: from its `--<name>-path` override when given, else from the
    model folder, with our class where `loader.native` has one for it, else with model_index.json's
    class (diffusers or transformers)."""
    override = args.component_paths.get(name)
    if override:
        return load_component_override(name, override, index, dtype, args.trust_remote_code)
    library, cls_name = index.components.get(name, (None, None))
    if cls_name is None:
        raise ModelLoadError(f"{index.path}: model_index.json has no component {name!r}")
    native = native_loader(cls_name, index.path / name)
    if native is not None:
        return native(index.path / name, **({"dtype": dtype} if dtype is not None else {}))
    cls = getattr(_import_library(library), cls_name, None)
    if cls is None:
        raise ModelLoadError(f"component {name!r}: {library} has no class {cls_name!r}")
    kwargs = {"dtype": dtype} if dtype is not None and isinstance(cls, type) and issubclass(cls, torch.nn.Module) else {}
    if _is_tokenizer_like(cls_name) and _needs_torchvision(cls_name):
        return tokenizer_without_torchvision(name, cls_name, index.path / name)
    try:
        return cls.from_pretrained(index.path / name, **kwargs)
    except Exception as e:  # library loaders raise many classes for a bad folder
        raise ModelLoadError(f"cannot load component {name!r} ({cls_name}) from {index.path / name}: {e}") from None


def _needs_torchvision(cls_name: str) -> bool:
    """Whether transformers can build processor `cls_name` only with torchvision, which is not installed."""
    import transformers

    if transformers.utils.is_torchvision_available():
        return False
    if cls_name == "Qwen2VLProcessor":  # its video processor needs torchvision; it declares no backends
        return True
    cls = getattr(transformers, cls_name, None)
    return cls is not None and "torchvision" in getattr(cls, "_backends", ())


def tokenizer_without_torchvision(name: str, cls_name: str, folder):
    """The tokenizer part of a processor folder whose class needs torchvision (FLUX.2's
    PixtralProcessor): text prompts need only the tokenizer and its chat template. A request
    that would need the image part fails on its own, naming torchvision. Qwen2VLProcessor gets
    a full stand-in (images too)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except Exception as e:
        raise ModelLoadError(f"component {name!r}: {cls_name} needs torchvision, which is not installed, and "
                             f"{folder} has no tokenizer of its own to fall back on ({e})") from None
    if cls_name == "Qwen2VLProcessor":  # images too: our processor makes the same inputs (Qwen-Image-Edit)
        from sglang_diffusion.models.text_encoders.qwen2_vl_processor import QwenVLProcessor

        logger.info("component %s: %s needs torchvision (not installed); QwenVLProcessor stands in", name, cls_name)
        return QwenVLProcessor.from_folder(folder, tokenizer)
    logger.info("component %s: %s needs torchvision (not installed); loaded its tokenizer (%s), which text "
                "prompts need", name, cls_name, type(tokenizer).__name__)
    return tokenizer


def torchvision_free_components(index: ModelIndex, skip=()) -> dict:
    """Tokenizers standing in for the model's processors that need torchvision (none when it is
    installed), for the diffusers backend to set in their place."""
    return {name: tokenizer_without_torchvision(name, cls_name, index.path / name)
            for name, (library, cls_name) in index.components.items()
            if name not in skip and library == "transformers" and cls_name and _is_tokenizer_like(cls_name)
            and _needs_torchvision(cls_name)}


def _is_tokenizer_like(cls_name: str) -> bool:
    return any(s in cls_name for s in ("Tokenizer", "Processor", "FeatureExtractor"))


def _import_library(library: str | None):
    if library == "diffusers":
        import diffusers
        return diffusers
    if library == "transformers":
        import transformers
        return transformers
    raise ModelLoadError(f"cannot load components of library {library!r}")
