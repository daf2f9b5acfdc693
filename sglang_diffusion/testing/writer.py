"""What a family is made of, and the one routine that writes it as a diffusers folder:
each component in its subfolder (config + safetensors, or tokenizer / scheduler files),
then model_index.json."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from sglang_diffusion.testing.presets import build_device, weight_dtype


@dataclass(frozen=True)
class Weights:
    """A model component, described by its constructor config and built only when written.

    For diffusers, `config` holds the config.json keys; for transformers, the keyword
    arguments of `config_class` (nested sub-configs as dicts)."""

    library: str
    class_name: str
    config: dict
    config_class: str | None = None

    def instantiate(self) -> torch.nn.Module:
        module = __import__(self.library)
        cls = getattr(module, self.class_name)
        if self.library == "diffusers":
            return cls.from_config(self.config)
        return cls(getattr(module, self.config_class)(**self.config))


@dataclass(frozen=True)
class Asset:
    """A component without weights (tokenizer, scheduler, processor): `make()` returns an
    object with `save_pretrained(folder)`."""

    library: str
    class_name: str
    make: Callable[[], Any]


class JsonFiles:
    """A component that is only JSON files, written as given (an image processor's
    preprocessor_config.json): the same bytes whichever processor backends are installed."""

    def __init__(self, files: dict[str, dict]):
        self.files = files

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        folder = pathlib.Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for name, content in self.files.items():
            (folder / name).write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")


def scheduler(class_name: str, **config) -> Asset:
    """A diffusers scheduler; the saved scheduler_config.json carries every default too."""

    def make():
        import diffusers

        return getattr(diffusers, class_name).from_config(config)

    return Asset("diffusers", class_name, make)


def flow_match_scheduler(max_image_seq_len: int, max_shift: float, **config) -> Asset:
    """FlowMatchEulerDiscreteScheduler with the resolution-dependent shift of FLUX and Qwen-Image:
    mu goes from base_shift 0.5 at 256 image tokens to `max_shift` at `max_image_seq_len`."""
    return scheduler(
        "FlowMatchEulerDiscreteScheduler",
        base_image_seq_len=256,
        base_shift=0.5,
        max_image_seq_len=max_image_seq_len,
        max_shift=max_shift,
        num_train_timesteps=1000,
        use_dynamic_shifting=True,
        **config,
    )


@dataclass(frozen=True)
class PipelineSpec:
    """A whole folder. A component given as None is written as `[null, null]`, the way
    diffusers records an optional component the real checkpoint leaves out."""

    class_name: str
    components: dict[str, Weights | Asset | None]
    config: dict = field(default_factory=dict)  # pipeline-level keys: boundary_ratio, expand_timesteps


def dit_pipeline(
    class_name: str,
    scheduler: Asset,
    encoders: list[tuple[Weights, Asset]],
    transformer: Weights,
    vae: Weights,
    config: dict | None = None,
    **others: Weights | Asset | None,
) -> PipelineSpec:
    """The folder every family shares: a scheduler, text encoders with their tokenizers
    (`text_encoder`/`tokenizer`, then `text_encoder_2`/`tokenizer_2`), the DiT and the VAE,
    plus the family's `others` (image encoder, a second expert)."""
    components: dict[str, Weights | Asset | None] = {"scheduler": scheduler}
    for i, (encoder, tokenizer) in enumerate(encoders):
        suffix = f"_{i + 1}" if i else ""
        components[f"text_encoder{suffix}"], components[f"tokenizer{suffix}"] = encoder, tokenizer
    components.update(transformer=transformer, vae=vae, **others)
    return PipelineSpec(class_name, components, config or {})


def component_seed(seed: int, name: str) -> int:
    """One seed per component, so adding a component never reshuffles the others' weights."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63)


@contextlib.contextmanager
def _weights_context(seed: int, preset: str):
    """Seeded RNG (restored afterwards), and the preset's default dtype and device, so that
    a `full` model is allocated once, in bf16, where it is initialised."""
    device, dtype = build_device(preset), weight_dtype(preset)
    devices = [device.index] if device.type == "cuda" else []
    previous_dtype = torch.get_default_dtype()
    with torch.random.fork_rng(devices=devices), device:
        torch.manual_seed(seed)
        torch.set_default_dtype(dtype)
        try:
            yield dtype
        finally:
            torch.set_default_dtype(previous_dtype)


def write_pipeline(spec: PipelineSpec, output_dir: str | os.PathLike, preset: str, seed: int) -> pathlib.Path:
    import diffusers

    out = pathlib.Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    index: dict[str, Any] = {"_class_name": spec.class_name, "_diffusers_version": diffusers.__version__}
    index.update(spec.config)
    for name, component in spec.components.items():
        if component is None:
            index[name] = [None, None]
            continue
        index[name] = [component.library, component.class_name]
        if isinstance(component, Asset):
            component.make().save_pretrained(out / name)
            continue
        with _weights_context(component_seed(seed, name), preset) as dtype:
            model = component.instantiate().eval()
        if any(p.dtype != dtype for p in model.parameters()):
            model = model.to(dtype)
        model.save_pretrained(out / name)
        del model
    (out / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return out
