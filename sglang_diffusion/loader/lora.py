"""LoRA adapters on a diffusers pipeline: several loaded at once by nickname, merged into the
weights on demand, and unmerged back to the original weights bit for bit.

diffusers' `load_lora_weights` does the format conversion and injects peft layers; from then
on this module drives peft's layer API directly, so that what runs is always one of two
states:
- unmerged: every LoRA layer disabled, so a forward is exactly the base layer's;
- merged: the chosen adapters folded into the base weights (`merge`), their layers enabled
  (a disabled merged layer would unmerge itself in its next forward).
peft unmerges by subtracting the delta, which is not bit-exact in floating point; so the
base weights of every layer are copied (to host memory) before a merge and copied back after.

The module-level functions are what `Engine.call` runs on every rank.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import torch

from sglang_diffusion.errors import InvalidRequestError, ModelLoadError

logger = logging.getLogger(__name__)

ALL_TARGETS = "all"


@dataclass(frozen=True)
class LoraSpec:
    nickname: str
    path: str | None = None  # None: an adapter already loaded under this nickname
    target: str = ALL_TARGETS  # a component name (transformer, transformer_2, text_encoder, ...) or "all"
    strength: float = 1.0


def _tuner_layers(module: torch.nn.Module):
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in module.modules() if isinstance(m, BaseTunerLayer)]


class LoraManager:
    def __init__(self, pipe, components: dict[str, torch.nn.Module]):
        self.pipe, self.components = pipe, components
        self.loaded: dict[str, str] = {}  # nickname -> path it was loaded from
        self.merged: list[LoraSpec] = []  # what is folded into the weights now
        self.last: list[LoraSpec] = []  # the last set, which merge() re-applies after an unmerge
        self._originals: dict[torch.nn.Module, tuple[torch.Tensor, torch.Tensor | None]] = {}

    # -- operations ------------------------------------------------------------------------
    def set(self, specs: list[LoraSpec]) -> dict:
        """Load what is not loaded yet and merge exactly `specs`. On any failure the adapters
        this call loaded are dropped and the weights are as they were before it."""
        self._check_specs(specs)
        previous, fresh = list(self.merged), []
        self.unmerge()
        try:
            for spec in specs:
                if spec.nickname not in self.loaded:
                    self._load(spec.nickname, spec.path)
                    fresh.append(spec.nickname)
            self._merge(specs)
        except Exception:
            self.unmerge()
            for nickname in fresh:
                self._delete(nickname)
            if previous:
                self._merge(previous)
            raise
        self.last = list(specs)
        return self.describe()

    def merge(self, target: str | None = None, strength: float | None = None) -> dict:
        """Merge the last set again (after an unmerge), optionally with another target or strength."""
        if not self.last:
            raise InvalidRequestError("no LoRA has been set: call set_lora first")
        specs = [replace(s, path=None, target=target or s.target,
                         strength=s.strength if strength is None else strength) for s in self.last]
        self._check_specs(specs)
        self.unmerge()
        self._merge(specs)
        self.last = specs
        return self.describe()

    def unmerge(self) -> dict:
        """Back to the original weights, bit for bit."""
        for layer, (weight, bias) in self._originals.items():
            if layer.merged:
                layer.unmerge()
            base = layer.get_base_layer()
            base.weight.data.copy_(weight)
            if bias is not None:
                base.bias.data.copy_(bias)
            layer.enable_adapters(False)
        self._originals.clear()
        self.merged = []
        return self.describe()

    def describe(self) -> dict:
        active: dict[str, list] = {}
        for spec in self.merged:
            for name in self._targets(spec.target):
                if self._holds(name, spec.nickname):
                    active.setdefault(name, []).append(
                        {"nickname": spec.nickname, "path": self.loaded[spec.nickname], "merged": True,
                         "strength": spec.strength})
        return {"loaded_adapters": [{"nickname": n, "path": p} for n, p in self.loaded.items()],
                "active": active}

    # -- helpers ---------------------------------------------------------------------------
    def _check_specs(self, specs: list[LoraSpec]) -> None:
        if not specs:
            raise InvalidRequestError("lora_nickname: give at least one adapter")
        nicknames = [s.nickname for s in specs]
        if len(set(nicknames)) != len(nicknames):
            raise InvalidRequestError(f"lora_nickname: each adapter once, got {nicknames}")
        for spec in specs:
            loaded_from = self.loaded.get(spec.nickname)
            if spec.path is None and loaded_from is None:
                raise InvalidRequestError(f"lora_nickname {spec.nickname!r} is not loaded: give its lora_path "
                                          f"(loaded: {', '.join(self.loaded) or 'none'})")
            if spec.path is not None and loaded_from is not None and spec.path != loaded_from:
                raise InvalidRequestError(f"lora_nickname {spec.nickname!r} is already loaded from {loaded_from!r}: "
                                          "pick another nickname for another adapter")
            if spec.target != ALL_TARGETS and spec.target not in self.components:
                raise InvalidRequestError(f"target {spec.target!r}: not a component of this pipeline "
                                          f"(valid: {ALL_TARGETS}, {', '.join(self.components)})")

    def _targets(self, target: str) -> list[str]:
        return list(self.components) if target == ALL_TARGETS else [target]

    def _holds(self, component: str, nickname: str) -> bool:
        return any(nickname in layer.lora_A for layer in _tuner_layers(self.components[component]))

    def _load(self, nickname: str, path: str) -> None:
        try:
            self.pipe.load_lora_weights(path, adapter_name=nickname)
        except Exception as e:  # diffusers raises OSError, ValueError, hub errors, ... for a bad adapter
            self._delete(nickname)
            raise ModelLoadError(f"lora_path {path!r}: cannot load a LoRA from it ({type(e).__name__}: {e})") from None
        self.loaded[nickname] = path
        if not any(self._holds(name, nickname) for name in self.components):
            self._delete(nickname)
            raise ModelLoadError(f"lora_path {path!r}: none of its weights match a layer of this model")
        self._disable_all()
        logger.info("LoRA %r loaded from %s", nickname, path)

    def _delete(self, nickname: str) -> None:
        for module in self.components.values():
            for layer in _tuner_layers(module):
                if nickname in layer.lora_A:
                    layer.delete_adapter(nickname)
        self.loaded.pop(nickname, None)
        self._disable_all()

    def _disable_all(self) -> None:
        for module in self.components.values():
            for layer in _tuner_layers(module):
                layer.enable_adapters(False)

    def _merge(self, specs: list[LoraSpec]) -> None:
        for name, module in self.components.items():
            wanted = [s for s in specs if name in self._targets(s.target)]
            for layer in _tuner_layers(module):
                here = [s for s in wanted if s.nickname in layer.lora_A]
                if not here:
                    continue
                base = layer.get_base_layer()
                self._originals[layer] = (base.weight.detach().to("cpu", copy=True),
                                          None if base.bias is None else base.bias.detach().to("cpu", copy=True))
                layer.enable_adapters(True)
                layer.set_adapter([s.nickname for s in here])
                for s in here:
                    layer.set_scale(s.nickname, s.strength)
                with torch.no_grad():
                    layer.merge(adapter_names=[s.nickname for s in here])
        self.merged = list(specs)
        logger.info("LoRA merged: %s", ", ".join(f"{s.nickname} x{s.strength} on {s.target}" for s in specs))


def _manager(pipeline) -> LoraManager:
    manager = getattr(pipeline, "lora", None)
    if manager is None:
        info = pipeline.describe()
        raise InvalidRequestError(f"LoRA adapters are not supported by this pipeline "
                                  f"({info['pipeline']} on the {info['backend']} backend)")
    return manager


def set_loras(pipeline, specs: list[LoraSpec]) -> dict:
    return _manager(pipeline).set(specs)


def merge_loras(pipeline, target: str | None, strength: float | None) -> dict:
    return _manager(pipeline).merge(target, strength)


def unmerge_loras(pipeline) -> dict:
    return _manager(pipeline).unmerge()


def list_loras(pipeline) -> dict:
    return _manager(pipeline).describe()
