"""Filling a native DiT from a diffusers checkpoint: key renames, fused projections, dtypes.

A model's parameters are named as diffusers names its keys, except for the renames of
`key_map` (fragment -> ours) and the *fused* parameters: one of our linears that stands for
several of the checkpoint's, side by side along the output features (q, k, v and the MLP input
of a FLUX single-stream block: one GEMM instead of four). `fused` maps our module's name
(the last path component, e.g. "to_qkv_mlp") to the checkpoint modules it concatenates,
relative to the same parent ("attn.to_q", "attn.to_k", ...).

Any checkpoint key left over, parameter left empty, or shape that does not match is a
ModelLoadError naming it.
"""

from __future__ import annotations

import torch
from torch import nn

from sglang_diffusion.errors import ModelLoadError


def rename(key: str, key_map: dict[str, str]) -> str:
    for theirs, ours in key_map.items():
        key = key.replace(theirs, ours)
    return key


def _fused_sources(fused: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, int]]:
    """checkpoint module suffix ("attn.to_q") -> (our fused module, its part index), longest first."""
    pairs = [(part, (ours, i)) for ours, parts in fused.items() for i, part in enumerate(parts)]
    return dict(sorted(pairs, key=lambda pair: -len(pair[0])))


def _fused_target(name: str, params, sources: dict[str, tuple[str, int]]) -> tuple[str | None, int, str]:
    """(our fused parameter that the (renamed) checkpoint tensor `name` is a part of, its index,
    the module path before the part's suffix), or (None, -1, ""): the longest suffix whose fused
    parameter exists here (FLUX: a single-stream block's "attn.to_q" joins the block's
    to_qkv_mlp, a double-stream block's joins attn.to_qkv)."""
    module, _, leaf = name.rpartition(".")
    for suffix, (ours, index) in sources.items():
        prefix = module[: len(module) - len(suffix)]
        if (module == suffix or module.endswith("." + suffix)) and f"{prefix}{ours}.{leaf}" in params:
            return f"{prefix}{ours}.{leaf}", index, prefix
    return None, -1, ""


def checkpoint_slices(model: nn.Module, shapes: dict[str, tuple[int, ...]], key_map: dict[str, str] | None = None,
                      fused: dict[str, tuple[str, ...]] | None = None) -> dict[str, tuple[str, int, int]]:
    """Where each checkpoint tensor lives in the loaded model: checkpoint key -> (our parameter,
    first row, end row); a fused parameter holds its parts stacked along dim 0, in order.
    `shapes` are the checkpoint's (key -> shape); keys that no parameter holds are left out.
    Run-time LoRA changes the rows of one checkpoint tensor in place through this."""
    params = dict(model.named_parameters())
    sources = _fused_sources(fused or {})
    renamed = {rename(key, key_map or {}): key for key in shapes}
    out = {}
    for name, key in renamed.items():
        rows = shapes[key][0] if shapes[key] else 1
        fused_name, index, prefix = _fused_target(name, params, sources)
        if fused_name is None:
            if name in params:
                out[key] = (name, 0, rows)
            continue
        leaf = name.rpartition(".")[2]
        parts = fused[fused_name.rsplit(".", 2)[-2]]
        start = sum(shapes[renamed[f"{prefix}{part}.{leaf}"]][0] for part in parts[:index])
        out[key] = (fused_name, start, start + rows)
    return out


def load_checkpoint(model: nn.Module, state: dict[str, torch.Tensor], *, dtype: torch.dtype,
                    device: torch.device | str = "cpu", key_map: dict[str, str] | None = None,
                    fused: dict[str, tuple[str, ...]] | None = None, keep_in_fp32: tuple[str, ...] = (),
                    where: str = "checkpoint") -> None:
    """Load diffusers-named tensors into `model` (built on the meta device), assigning them."""
    params = dict(model.named_parameters())
    sources = _fused_sources(fused or {})
    parts: dict[str, dict[int, torch.Tensor]] = {}  # our fused parameter -> its parts by index
    mapped: dict[str, torch.Tensor] = {}
    unused = []
    for key, tensor in state.items():
        name = rename(key, key_map or {})
        fused_name, index, _ = _fused_target(name, params, sources)
        if fused_name is not None:
            parts.setdefault(fused_name, {})[index] = tensor
        elif name not in params:
            unused.append(key)
        else:
            mapped[name] = tensor
    for name, pieces in parts.items():
        count = len(fused[name.rsplit(".", 2)[-2]])
        if name not in params or len(pieces) != count:
            unused.append(f"{name} (parts of a fused projection: {len(pieces)} of {count})")
            continue
        mapped[name] = torch.cat([pieces[i] for i in range(count)])
    for name, tensor in mapped.items():
        if tuple(tensor.shape) != tuple(params[name].shape):
            raise ModelLoadError(f"{where}: {name} has shape {tuple(tensor.shape)}, the model built from "
                                 f"config.json expects {tuple(params[name].shape)}")
        keep = any(f".{p}." in f".{name}." for p in keep_in_fp32)
        mapped[name] = tensor.to(device=device, dtype=torch.float32 if keep else dtype)
    missing = sorted(params.keys() - mapped.keys())
    if unused or missing:
        raise ModelLoadError(f"{where} does not match its config.json: " + "; ".join(filter(None, [
            f"unused checkpoint keys: {', '.join(unused[:8])}" if unused else "",
            f"parameters without weights: {', '.join(missing[:8])}" if missing else ""])))
    model.load_state_dict(mapped, strict=True, assign=True)


def build_from_folder(cls, config_from_dict, folder, dtype: torch.dtype, device: torch.device | str,
                      state_edit=None) -> nn.Module:
    """`cls(config)` built on the meta device from a diffusers transformer folder, then filled
    through `cls.load_checkpoint`. `config_from_dict(raw, where)` reads config.json;
    `state_edit(state)` may change the checkpoint (diffusers keys) first: LoRA merging does."""
    from pathlib import Path

    from sglang_diffusion.loader.weights import load_state_dict, read_config

    folder = Path(folder)
    config = config_from_dict(read_config(folder), where=str(folder / "config.json"))
    with torch.device("meta"):
        model = cls(config)
    state = load_state_dict(folder)
    if state_edit is not None:
        state = state_edit(state)
    model.load_checkpoint(state, dtype, device, where=str(folder))
    return model.eval().requires_grad_(False)
