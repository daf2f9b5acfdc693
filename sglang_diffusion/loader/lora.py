"""LoRA adapters at run time: several loaded at once by nickname (kept in host memory), merged
into the weights on demand, switched between requests, and unmerged back to the original
weights bit for bit.

`LoraAdapters` is the state every pipeline's LoRA handle shares: what is loaded, what requests
that name no adapter run with (`active`, set by set / merge / unmerge), and what the weights
hold now (`merged`: a request that names its own adapters switches to them, and the next
request switches again only if it needs something else). Two kinds of weights implement it:
- `LoraManager` here, a diffusers pipeline: diffusers' `load_lora_weights` converts the file and
  injects peft layers; from then on every LoRA layer is either disabled (a forward is exactly
  the base layer's) or merged with its base weights copied to host memory first, so that
  unmerging copies them back (peft's own unmerge subtracts the delta: not bit-exact);
- `lora_native.NativeLoraManager`, our DiTs: the adapter's tensors stay in host memory and a
  merge writes orig + sum(strength * delta) into the touched rows, originals kept likewise.

A switch runs between requests (`Engine.call` and `Engine.generate` hold one lock), on every
rank alike. The module-level functions are what `Engine.call` runs on every rank;
`use_request_loras` is what a rank calls before a request.
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


class LoraAdapters:
    """What a pipeline's LoRA handle keeps and how set / merge / unmerge / a request's adapters
    change it. Subclasses hold the weights: `_load`, `_delete`, `_apply` (make the weights
    exactly base + `specs`) and `_holds` (whether `spec` changes a component)."""

    def __init__(self, components: list[str]):
        self.component_names = components
        self.loaded: dict[str, str] = {}  # nickname -> path it was loaded from
        self.active: list[LoraSpec] = []  # what requests naming no adapter run with
        self.merged: list[LoraSpec] = []  # what the weights hold now
        self.last: list[LoraSpec] = []  # the last set, which merge() re-applies after an unmerge

    # -- operations ------------------------------------------------------------------------
    def set(self, specs: list[LoraSpec]) -> dict:
        """Load what is not loaded yet and merge exactly `specs`. On any failure the adapters
        this call loaded are dropped and the weights are as they were before it."""
        self._check_specs(specs)
        previous, fresh = self.merged, []
        try:
            if any(s.nickname not in self.loaded for s in specs):
                self._switch([])  # adapters load onto the base weights
            for spec in specs:
                if spec.nickname not in self.loaded:
                    self._load(spec.nickname, spec.path)
                    self.loaded[spec.nickname] = spec.path
                    fresh.append(spec.nickname)
            self._switch([replace(s, path=None) for s in specs])
        except Exception:
            for nickname in fresh:
                self._delete(nickname)
                self.loaded.pop(nickname, None)
            self._apply(previous)  # loading and deleting peft layers disables the merged ones
            self.merged = previous
            raise
        self.active = self.last = list(self.merged)
        return self.describe()

    def merge(self, target: str | None = None, strength: float | None = None) -> dict:
        """Merge the last set again (after an unmerge), optionally with another target or strength."""
        if not self.last:
            raise InvalidRequestError("no LoRA has been set: call set_lora first")
        specs = [replace(s, target=target or s.target, strength=s.strength if strength is None else strength)
                 for s in self.last]
        self._check_specs(specs)
        self._switch(specs)
        self.active = self.last = specs
        return self.describe()

    def unmerge(self) -> dict:
        """Back to the original weights, bit for bit."""
        self._switch([])
        self.active = []
        return self.describe()

    def use(self, specs: list[LoraSpec] | None) -> None:
        """Before a request: the weights it runs with (`specs`, or `active` when it names none)."""
        wanted = self.active if specs is None else specs
        if specs:
            self._check_specs(specs)
        if wanted != self.merged:
            self._switch(wanted)

    def describe(self) -> dict:
        active: dict[str, list] = {}
        for spec in self.active:
            for name in self._targets(spec.target):
                if self._holds(name, spec):
                    active.setdefault(name, []).append(
                        {"nickname": spec.nickname, "path": self.loaded[spec.nickname], "merged": True,
                         "strength": spec.strength})
        return {"loaded_adapters": [{"nickname": n, "path": p} for n, p in self.loaded.items()],
                "active": active}

    # -- helpers ---------------------------------------------------------------------------
    def _switch(self, specs: list[LoraSpec]) -> None:
        """The weights to base + `specs`; if that fails, back to what they held."""
        previous = self.merged
        try:
            self._apply(specs)
        except Exception:
            self._apply(previous)
            raise
        self.merged = list(specs)
        if specs:
            logger.info("LoRA merged: %s", ", ".join(f"{s.nickname} x{s.strength} on {s.target}" for s in specs))

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
            if spec.target != ALL_TARGETS and spec.target not in self.component_names:
                raise InvalidRequestError(f"target {spec.target!r}: not a component of this pipeline "
                                          f"(valid: {ALL_TARGETS}, {', '.join(self.component_names)})")

    def _targets(self, target: str) -> list[str]:
        return list(self.component_names) if target == ALL_TARGETS else [target]

    def _load(self, nickname: str, path: str) -> None:
        raise NotImplementedError

    def _delete(self, nickname: str) -> None:
        raise NotImplementedError

    def _apply(self, specs: list[LoraSpec]) -> None:
        raise NotImplementedError

    def _holds(self, component: str, spec: LoraSpec) -> bool:
        raise NotImplementedError


def _tuner_layers(module: torch.nn.Module):
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in module.modules() if isinstance(m, BaseTunerLayer)]


class LoraManager(LoraAdapters):
    """A diffusers pipeline's adapters, as peft layers (see the module docstring)."""

    def __init__(self, pipe, components: dict[str, torch.nn.Module]):
        super().__init__(list(components))
        self.pipe, self.components = pipe, components
        self._originals: dict[torch.nn.Module, tuple[torch.Tensor, torch.Tensor | None]] = {}

    def _holds(self, component: str, spec: LoraSpec) -> bool:
        return any(spec.nickname in layer.lora_A for layer in _tuner_layers(self.components[component]))

    def _load(self, nickname: str, path: str) -> None:
        try:
            self.pipe.load_lora_weights(path, adapter_name=nickname)
        except Exception as e:  # diffusers raises OSError, ValueError, hub errors, ... for a bad adapter
            self._delete(nickname)
            raise ModelLoadError(f"lora_path {path!r}: cannot load a LoRA from it ({type(e).__name__}: {e})") from None
        if not any(self._holds(name, LoraSpec(nickname)) for name in self.components):
            self._delete(nickname)
            raise ModelLoadError(f"lora_path {path!r}: none of its weights match a layer of this model")
        self._disable_all()
        logger.info("LoRA %r loaded from %s", nickname, path)

    def _delete(self, nickname: str) -> None:
        for module in self.components.values():
            for layer in _tuner_layers(module):
                if nickname in layer.lora_A:
                    layer.delete_adapter(nickname)
        self._disable_all()

    def _disable_all(self) -> None:
        for module in self.components.values():
            for layer in _tuner_layers(module):
                layer.enable_adapters(False)

    def _restore(self) -> None:
        for layer, (weight, bias) in self._originals.items():
            if layer.merged:
                layer.unmerge()
            base = layer.get_base_layer()
            base.weight.data.copy_(weight)
            if bias is not None:
                base.bias.data.copy_(bias)
            layer.enable_adapters(False)
        self._originals.clear()

    def _apply(self, specs: list[LoraSpec]) -> None:
        self._restore()
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


def _adapters(pipeline) -> LoraAdapters:
    manager = getattr(pipeline, "lora", None)
    if manager is None:
        info = pipeline.describe()
        raise InvalidRequestError(f"LoRA adapters are not supported by this pipeline "
                                  f"({info['pipeline']} on the {info['backend']} backend)")
    return manager


def set_loras(pipeline, specs: list[LoraSpec]) -> dict:
    return _adapters(pipeline).set(specs)


def merge_loras(pipeline, target: str | None, strength: float | None) -> dict:
    return _adapters(pipeline).merge(target, strength)


def unmerge_loras(pipeline) -> dict:
    return _adapters(pipeline).unmerge()


def list_loras(pipeline) -> dict:
    return _adapters(pipeline).describe()


def lora_specs(nicknames: str | list[str], paths=None, targets=ALL_TARGETS, strengths=1.0) -> list[LoraSpec]:
    """set_lora's arguments as specs: one nickname or several, each other argument one value for
    all or a list of one per nickname."""
    names = [nicknames] if isinstance(nicknames, str) else list(nicknames)

    def per_adapter(value, what: str) -> list:
        if not isinstance(value, list):
            return [value] * len(names)
        if len(value) != len(names):
            raise InvalidRequestError(f"{what}: give one value per lora_nickname ({len(names)}), got {len(value)}")
        return value

    return [LoraSpec(name, path, target, float(strength)) for name, path, target, strength in
            zip(names, per_adapter(paths, "lora_path"), per_adapter(targets, "target"),
                per_adapter(strengths, "strength"))]


def request_specs(nicknames: str | list[str] | None, strengths: float | list[float] | None) -> list[LoraSpec] | None:
    """A request's `lora_adapters` / `lora_strength` as specs (None: it names none); one
    strength for all, or one per adapter (default 1)."""
    if nicknames is None:
        if strengths is not None:
            raise InvalidRequestError("lora_strength needs lora_nickname: the adapters it scales")
        return None
    return lora_specs(nicknames, strengths=1.0 if strengths is None else strengths)


def use_request_loras(pipeline, params) -> None:
    """Before a request, on every rank: switch to the adapters it names (`lora_adapters`,
    `lora_strength`), or to the active ones when it names none."""
    specs = request_specs(params.lora_adapters, params.lora_strength)
    manager = getattr(pipeline, "lora", None)
    if manager is None:
        if specs:
            _adapters(pipeline)  # the refusal naming the pipeline
        return
    manager.use(specs)
