"""The tiny-model factory: diffusers-format folders with random weights for every supported
family, built offline (tokenizers included), in three presets (see `presets.py`).

    from sglang_diffusion.testing import build_model, cached_model, TINY_SAMPLING
    path = cached_model("wan2.1-t2v")              # built once per cache, then reused
    pipe = diffusers.DiffusionPipeline.from_pretrained(path)
    video = pipe("a cat", **TINY_SAMPLING["wan2.1-t2v"]).frames

Each folder mirrors the real checkpoint's model_index.json and component configs (class
names, scheduler settings, flags such as boundary_ratio and expand_timesteps); only the
sizes differ, and `full` keeps the real transformer and VAE sizes too. So, as with the real
models, `wan2.1-i2v` wants an `image=`, and `flux.2`'s tokenizer is a PixtralProcessor,
which transformers only builds with torchvision installed (see flux2.py).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import pathlib
import shutil
import tempfile
from collections.abc import Callable

from sglang_diffusion.errors import ConfigError
from sglang_diffusion.testing import flux, flux2, hunyuan_video, qwen_image, wan
from sglang_diffusion.testing.presets import PRESETS
from sglang_diffusion.testing.writer import PipelineSpec, Weights, write_pipeline

_SPECS: dict[str, Callable[[str], PipelineSpec]] = {
    **{variant: functools.partial(wan.pipeline_spec, variant) for variant in wan.VARIANTS},
    "hunyuanvideo": hunyuan_video.pipeline_spec,
    "flux.1": flux.pipeline_spec,
    "flux.1-kontext": functools.partial(flux.pipeline_spec, class_name="FluxKontextPipeline"),
    "flux.2": flux2.pipeline_spec,
    "qwen-image": qwen_image.pipeline_spec,
    **{name: functools.partial(qwen_image.edit_spec, name) for name in qwen_image.EDIT_PIPELINES},
}
FAMILIES = tuple(_SPECS)

# Generation settings that work with every `tiny` family: pass them to the pipeline's __call__.
TINY_SAMPLING: dict[str, dict] = {
    **wan.TINY_SAMPLING,
    "hunyuanvideo": hunyuan_video.TINY_SAMPLING,
    "flux.1": flux.TINY_SAMPLING,
    "flux.1-kontext": flux.TINY_SAMPLING,
    "flux.2": flux2.TINY_SAMPLING,
    "qwen-image": qwen_image.TINY_SAMPLING,
    **dict.fromkeys(qwen_image.EDIT_PIPELINES, qwen_image.TINY_SAMPLING),
}

__all__ = ["FAMILIES", "PRESETS", "TINY_SAMPLING", "build_model", "cached_model", "model_configs", "pipeline_class"]


def _check(family: str, preset: str) -> None:
    if family not in _SPECS:
        raise ConfigError(f"unknown model family {family!r}; valid families: {', '.join(FAMILIES)}")
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}")


def _spec(family: str, preset: str) -> PipelineSpec:
    _check(family, preset)
    return _SPECS[family](preset)


def model_configs(family: str, preset: str = "tiny") -> dict[str, dict]:
    """The constructor config of every weighted component (transformer, vae, text and image
    encoders) that `build_model` would write, without allocating any weights."""
    spec = _spec(family, preset)
    return {name: dict(c.config) for name, c in spec.components.items() if isinstance(c, Weights)}


def pipeline_class(family: str) -> str:
    """The `_class_name` of `family`'s model_index.json (the pipeline the registry looks up)."""
    return _spec(family, "tiny").class_name


def build_model(family: str, output_dir: str | os.PathLike, preset: str = "tiny", seed: int = 0) -> pathlib.Path:
    """Write a complete diffusers folder for `family` at `preset` into `output_dir` and
    return it. The same seed gives byte-identical files."""
    return write_pipeline(_spec(family, preset), output_dir, preset, seed)


_STAMP = ".sglang_diffusion_testing.json"


def _stamp(family: str, preset: str) -> dict:
    """What a cached folder was built from: the factory's own source and the library
    versions, so an edit to a config or an upgrade rebuilds it. The versions come from the
    installed metadata: importing the libraries would cost the demo generation seconds."""
    from importlib.metadata import version

    digest = hashlib.sha256()
    for source in sorted(pathlib.Path(__file__).parent.glob("*.py")):
        digest.update(source.name.encode() + b"\0" + source.read_bytes())
    return dict(
        family=family,
        preset=preset,
        factory=digest.hexdigest()[:16],
        diffusers=version("diffusers"),
        transformers=version("transformers"),
    )


def _is_current(folder: pathlib.Path, stamp: dict) -> bool:
    try:
        return json.loads((folder / _STAMP).read_text()) == stamp
    except (OSError, ValueError):
        return False


def model_cache_dir() -> pathlib.Path:
    """Where built models are kept: $XDG_CACHE_HOME (or ~/.cache)/sglang_diffusion/models."""
    return pathlib.Path(os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache") / "sglang_diffusion" / "models"


def cached_model(family: str, preset: str = "tiny", cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """Build `family` at `preset` (seed 0) once into `cache_dir`/<family>-<preset> and return
    that folder. The default cache is $XDG_CACHE_HOME (or ~/.cache)/sglang_diffusion/models.

    Safe across processes: each builds into a temporary folder beside the target and renames
    it into place; a process that loses the race uses the winner's folder."""
    _check(family, preset)  # not _spec: building the spec imports transformers (its tokenizers)
    root = pathlib.Path(cache_dir) if cache_dir is not None else model_cache_dir()
    target = root / f"{family}-{preset}"
    stamp = _stamp(family, preset)
    if _is_current(target, stamp):
        return target
    root.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{family}-{preset}.", dir=root))
    try:
        build_model(family, staging, preset)
        (staging / _STAMP).write_text(json.dumps(stamp, indent=2, sort_keys=True) + "\n")
        try:
            staging.rename(target)
        except OSError:  # the target exists: another process's build, or a stale one
            if _is_current(target, stamp):
                return target
            stale = pathlib.Path(tempfile.mkdtemp(prefix=f".{family}-{preset}.stale.", dir=root))
            try:
                target.rename(stale / "old")
            except FileNotFoundError:
                pass
            shutil.rmtree(stale, ignore_errors=True)
            try:
                staging.rename(target)
            except OSError:
                if not _is_current(target, stamp):
                    raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
