"""Whether `--<component>-path` overrides fit the rest of the model, read from the config.json
files before any weight is loaded: a transformer from another model size reads the text
encoder's hidden states and the VAE's latent channels, and a mismatch would otherwise surface
as a shape error deep inside the first request.

Each pipeline class lists the config entries that must agree between its components: (component,
key, other component, other key, factor): `component.key == factor * other.key`. A key is looked
up in config.json, then in its `text_config` (the vision-language text encoders keep their
hidden size there). Entries missing on either side (a null image_dim, a VAE class without the
key) are not compared.
"""

from __future__ import annotations

import json
from pathlib import Path

from sglang_diffusion.errors import ModelLoadError
from sglang_diffusion.loader.resolve import ModelIndex, resolve_component_path

_WAN = [
    ("transformer", "text_dim", "text_encoder", "d_model", 1),
    ("transformer", "out_channels", "vae", "z_dim", 1),
    ("transformer", "image_dim", "image_encoder", "hidden_size", 1),
    ("transformer_2", "text_dim", "text_encoder", "d_model", 1),
    ("transformer_2", "out_channels", "vae", "z_dim", 1),
    ("transformer_2", "in_channels", "transformer", "in_channels", 1),
]
_QWEN_IMAGE = [
    ("transformer", "joint_attention_dim", "text_encoder", "hidden_size", 1),
    ("transformer", "in_channels", "vae", "z_dim", 4),  # 2x2 patches of latents
    ("transformer", "out_channels", "vae", "z_dim", 1),
]
_FLUX = [
    ("transformer", "joint_attention_dim", "text_encoder_2", "d_model", 1),
    ("transformer", "pooled_projection_dim", "text_encoder", "projection_dim", 1),
    ("transformer", "in_channels", "vae", "latent_channels", 4),  # 2x2 patches of latents
]
FITS: dict[str, list[tuple[str, str, str, str, int]]] = {
    "WanPipeline": _WAN,
    "WanImageToVideoPipeline": _WAN,
    "FluxPipeline": _FLUX,
    "FluxKontextPipeline": _FLUX,
    # the DiT reads three of Mistral's hidden layers stacked; the VAE's latent channels are not
    # compared: its tiny autoencoder counts the packed ones
    "Flux2Pipeline": [("transformer", "joint_attention_dim", "text_encoder", "hidden_size", 3)],
    "HunyuanVideoPipeline": [
        ("transformer", "text_embed_dim", "text_encoder", "hidden_size", 1),
        ("transformer", "pooled_projection_dim", "text_encoder_2", "hidden_size", 1),
        ("transformer", "in_channels", "vae", "latent_channels", 1),
        ("transformer", "out_channels", "vae", "latent_channels", 1),
    ],
    "QwenImagePipeline": _QWEN_IMAGE,
    "QwenImageEditPipeline": _QWEN_IMAGE,
    "QwenImageEditPlusPipeline": _QWEN_IMAGE,
}


def _read(folder: Path) -> dict:
    try:
        return json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return {}  # no readable config here: the loader says so when it loads the component


def _value(config: dict, key: str):
    if key in config:
        return config[key]
    return (config.get("text_config") or {}).get(key)


def check_component_fit(overrides: dict[str, str], index: ModelIndex) -> None:
    """A ModelLoadError naming each override whose config disagrees with the components it
    works with (the model's own, or their overrides), and the entries that disagree."""
    if not overrides:
        return
    folders = {name: resolve_component_path(name, path) for name, path in overrides.items()}
    configs: dict[str, dict] = {}

    def config(name: str) -> dict:
        if name not in configs:
            configs[name] = _read(folders.get(name, index.path / name))
        return configs[name]

    problems: dict[str, list[str]] = {}
    for component, key, other, other_key, factor in FITS.get(index.class_name, []):
        if component not in overrides and other not in overrides:
            continue  # the model's own components fit each other
        if component not in index.components or other not in index.components:
            continue
        value, other_value = _value(config(component), key), _value(config(other), other_key)
        if value is None or other_value is None or value == factor * other_value:
            continue
        times = f"{factor} x " if factor != 1 else ""
        culprit = component if component in overrides else other
        problems.setdefault(culprit, []).append(
            f"{component}.{key} is {value}, but {times}{other}.{other_key} is {factor * other_value}"
            + (f" ({other_value})" if factor != 1 else ""))
    if problems:
        lines = [f"--{name.replace('_', '-')}-path {overrides[name]}: component {name!r} does not fit this model "
                 f"({index.path}): " + "; ".join(entries) for name, entries in problems.items()]
        raise ModelLoadError("\n".join(lines))
