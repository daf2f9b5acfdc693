"""What every native DiT carries around its blocks: its config read from config.json, dtype
and device, the attention backend, building from a diffusers folder and loading a checkpoint.

A DiT subclasses `NativeDiT` and sets `config_class` (with `from_dict(raw, where)`), `key_map`
and `fused` (see `checkpoint.load_checkpoint`); its `proj_out` linear tells dtype and device.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch
from torch import nn

from sglang_diffusion.errors import ModelLoadError
from sglang_diffusion.layers.attention import Attention

logger = logging.getLogger(__name__)


def config_values(cls, raw: dict, where: str, model: str) -> dict:
    """The keys of config.json that the dataclass `cls` has as fields (lists as tuples: the
    configs are frozen); the others are logged as ignored (`model` names the transformer)."""
    known = {f.name for f in dataclasses.fields(cls)}
    ignored = sorted(k for k in raw if k not in known and not k.startswith("_"))
    if ignored:
        logger.warning("%s: ignoring keys the %s transformer does not take: %s", where, model, ", ".join(ignored))
    return {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items() if k in known}


def check_rope_axes(where: str, name: str, axes: tuple[int, ...], head_dim: int) -> None:
    """RoPE splits each head's dimensions between the axes: their sizes must add up to it."""
    if sum(axes) != head_dim:
        raise ModelLoadError(f"{where}: {name} {axes} must add up to attention_head_dim {head_dim}")


class DiTConfig:
    """Base of the native DiTs' frozen config dataclasses: the model width is heads x head_dim,
    the MLP's `mlp_ratio` times it."""

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def ffn_dim(self) -> int:
        return int(self.inner_dim * self.mlp_ratio)


class NativeDiT(nn.Module):
    config_class: type
    key_map: dict[str, str] = {}
    fused: dict[str, tuple[str, ...]] = {}

    @property
    def dtype(self) -> torch.dtype:
        return self.proj_out.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.proj_out.weight.device

    def set_attention_backend(self, backend) -> None:
        for module in self.modules():
            if isinstance(module, Attention):
                module.set_backend(backend)

    @classmethod
    def from_pretrained(cls, folder: str | Path, dtype: torch.dtype = torch.float32,
                        device: torch.device | str = "cpu", state_edit=None):
        """Build from a diffusers transformer folder (`checkpoint.build_from_folder`); `state_edit`
        may change the checkpoint first (LoRA merging)."""
        from sglang_diffusion.models.dits.checkpoint import build_from_folder

        return build_from_folder(cls, cls.config_class.from_dict, folder, dtype, device, state_edit)

    def load_checkpoint(self, state: dict[str, torch.Tensor], dtype: torch.dtype,
                        device: torch.device | str = "cpu", where: str = "checkpoint") -> None:
        from sglang_diffusion.models.dits.checkpoint import load_checkpoint

        load_checkpoint(self, state, dtype=dtype, device=device, key_map=self.key_map, fused=self.fused,
                        where=where)

    def checkpoint_slices(self, shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[str, int, int]]:
        """checkpoint key -> (our parameter, rows) for run-time LoRA (`checkpoint.checkpoint_slices`)."""
        from sglang_diffusion.models.dits.checkpoint import checkpoint_slices

        return checkpoint_slices(self, shapes, self.key_map, self.fused)
