"""LoRA adapters on our native DiTs at run time (`--lora-path` at start-up goes through here too).

An adapter is read once (`lora_merge.read_lora`) and its tensors stay in host memory under its
nickname. Merging a set of adapters writes, for every checkpoint tensor they touch,

    W = W_orig + sum_i strength_i * delta_i          (fp32 sums, cast to the parameter's dtype)

into the rows of our parameter that hold it (a fused q/k/v parameter holds several checkpoint
tensors: `checkpoint_slices`). The original of every parameter a merge touches is copied to
host memory the first time and copied back before the next merge, so unmerging is exact, bit
for bit, however many switches came before (no subtract-back). The originals stay cached: the
next switch to the same layers copies nothing to the host.

In fp32 a merge here equals the start-up merge into the checkpoint (`lora_merge.merge_lora`):
the same additions in the same order.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from torch import nn

from sglang_diffusion.errors import ModelLoadError
from sglang_diffusion.loader.lora import ALL_TARGETS, LoraAdapters, LoraSpec
from sglang_diffusion.loader.lora_merge import LoraFile, MatchedLayer, lora_deltas, match_lora, read_lora

logger = logging.getLogger(__name__)


def checkpoint_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    """key -> shape of a component folder's checkpoint, from the safetensors headers (no tensor read)."""
    from safetensors import safe_open

    from sglang_diffusion.loader.weights import weight_files

    shapes = {}
    for path in weight_files(Path(folder)):
        with safe_open(str(path), framework="pt") as f:
            shapes.update({key: tuple(f.get_slice(key).get_shape()) for key in f.keys()})
    return shapes


def _update_numel(layer) -> int | None:
    """How many elements the weight update of an adapter layer has (None: it changes only a bias)."""
    if layer.diff is not None:
        return layer.diff.numel()
    if layer.A is not None and layer.B is not None:
        return layer.B.shape[0] * math.prod(layer.A.shape[1:])
    return None


class NativeLoraManager(LoraAdapters):
    def __init__(self, dits: dict[str, tuple[nn.Module, Path]]):
        """`dits`: component name -> (our DiT, the folder its checkpoint was loaded from)."""
        super().__init__(list(dits))
        self.models = {name: model for name, (model, _) in dits.items()}
        self.shapes = {name: checkpoint_shapes(folder) for name, (_, folder) in dits.items()}
        self.slices = {name: self.models[name].checkpoint_slices(self.shapes[name]) for name in dits}
        self.files: dict[str, LoraFile] = {}
        self._matched: dict[tuple[str, str, str], list[MatchedLayer]] = {}  # (nickname, component, unprefixed)
        self._originals: dict[tuple[str, str], torch.Tensor] = {}  # (component, parameter) -> host copy
        self._modified: set[tuple[str, str]] = set()

    def _layers(self, nickname: str, component: str, target: str) -> list[MatchedLayer]:
        """The adapter's layers that change `component` when aimed at `target`: with "all",
        keys naming no component are the transformer's; aimed at one component, they are its."""
        unprefixed = "transformer" if target == ALL_TARGETS else component
        key = (nickname, component, unprefixed)
        if key not in self._matched:
            self._matched[key] = [m for m in match_lora(self.shapes[component], self.files[nickname], component,
                                                        unprefixed)
                                  if m.module + ".weight" in self.slices[component]]
        return self._matched[key]

    def _holds(self, component: str, spec: LoraSpec) -> bool:
        return bool(self._layers(spec.nickname, component, spec.target))

    def _load(self, nickname: str, path: str) -> None:
        lora = read_lora(path)
        self.files[nickname] = lora
        try:
            matched = {name: self._layers(nickname, name, name) for name in self.models}
            for name, layers in matched.items():
                for m in layers:
                    numel, shape = _update_numel(m.layer), self.shapes[name][m.module + ".weight"]
                    if numel is not None and numel != math.prod(shape):
                        raise ModelLoadError(f"lora_path {path!r}: {m.name} does not fit {name}'s {m.module} "
                                             f"(shape {shape})")
            if not any(matched.values()):
                raise ModelLoadError(f"lora_path {path!r}: none of its weights match a layer of "
                                     f"{' or '.join(self.models)}")
        except ModelLoadError:
            self._delete(nickname)
            raise
        logger.info("LoRA %r loaded from %s: %s", nickname, path,
                    ", ".join(f"{len(layers)} layers of {name}" for name, layers in matched.items()))

    def _delete(self, nickname: str) -> None:
        self.files.pop(nickname, None)
        self._matched = {k: v for k, v in self._matched.items() if k[0] != nickname}

    @torch.no_grad()
    def _apply(self, specs: list[LoraSpec]) -> None:
        params = {name: dict(model.named_parameters()) for name, model in self.models.items()}
        for component, name in self._modified:
            params[component][name].copy_(self._originals[(component, name)])
        self._modified.clear()
        for spec in specs:
            lora = self.files[spec.nickname]
            for component in self._targets(spec.target):
                layers = self._layers(spec.nickname, component, spec.target)
                device = next(self.models[component].parameters()).device
                for key, delta in lora_deltas(layers, self.shapes[component], lora, component, spec.strength,
                                              device):
                    if key not in self.slices[component]:  # a bias our layer does not have
                        continue
                    name, start, stop = self.slices[component][key]
                    param = params[component][name]
                    if (component, name) not in self._originals:
                        self._originals[(component, name)] = param.detach().to("cpu", copy=True)
                    rows = param[start:stop] if param.dim() else param
                    rows.copy_((rows.float() + delta.view(rows.shape)).to(param.dtype))
                    self._modified.add((component, name))
