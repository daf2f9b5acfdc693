"""Reading a component's weights: one safetensors file, or shards listed by an index.

A diffusers component folder holds `diffusion_pytorch_model.safetensors`, or
`diffusion_pytorch_model-0000i-of-0000n.safetensors` shards with
`diffusion_pytorch_model.safetensors.index.json` (its `weight_map` names the shard of each key).
Native models map these keys onto their own parameters (see `models/dits/*.py`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from sglang_diffusion.errors import ModelLoadError

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
INDEX_NAME = WEIGHTS_NAME + ".index.json"


class ConfigDict(dict):
    """A component's config read as diffusers' FrozenDict is: `config.key` or `config.get(key)`
    (what the stages read from our schedulers and VAEs, as from diffusers')."""

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def read_config(folder: Path) -> dict:
    path = folder / "config.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelLoadError(f"{folder} has no config.json: not a diffusers component folder") from None
    except (OSError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"cannot read {path}: {e}") from None


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a component folder, shards in index order."""
    index = folder / INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, json.JSONDecodeError, KeyError) as e:
            raise ModelLoadError(f"cannot read the shard index {index}: {e}") from None
        files = [folder / name for name in dict.fromkeys(weight_map.values())]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ModelLoadError(f"{index} lists shards that are missing: {', '.join(missing)}")
        return files
    single = folder / WEIGHTS_NAME
    if single.is_file():
        return [single]
    found = sorted(folder.glob("*.safetensors"))
    if len(found) == 1:
        return found
    raise ModelLoadError(f"{folder} has no {WEIGHTS_NAME} (nor a shard index {INDEX_NAME})")


def load_state_dict(folder: Path, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Every tensor of a component folder, keys as stored."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for path in weight_files(folder):
        try:
            shard = load_file(path, device=str(device))
        except (SafetensorError, OSError) as e:
            raise ModelLoadError(f"cannot read weights {path}: {e}") from None
        duplicated = state.keys() & shard.keys()
        if duplicated:
            raise ModelLoadError(f"{path}: keys also in another shard: {', '.join(sorted(duplicated)[:5])}")
        state.update(shard)
    return state
