"""`--<component>-path` on native pipelines: a key model_index.json does not have is refused with
the valid keys; a component whose config does not fit the rest of the model is a ModelLoadError
naming it and the entries that disagree, before any weight is read."""

from __future__ import annotations

import json

import pytest

from sglang_diffusion.config.server_args import ServerArgs
from sglang_diffusion.errors import ConfigError, ModelLoadError
from sglang_diffusion.loader.fit import FITS, check_component_fit
from sglang_diffusion.loader.resolve import read_model_index
from sglang_diffusion.pipelines.registry import build_pipeline
from sglang_diffusion.platform import Platform
from sglang_diffusion.testing import FAMILIES
from tests.conftest import run_cli


def _config_only(source, target, **changes):
    """A component folder holding only config.json, with `changes`: no weights to load."""
    target.mkdir(parents=True)
    config = json.loads((source / "config.json").read_text())
    (target / "config.json").write_text(json.dumps({**config, **changes}))
    return target


def _build(model, backend="auto", **paths):
    return build_pipeline(ServerArgs(model_path=str(model), backend=backend, component_paths=paths),
                          Platform.current())


def test_unknown_component_key_lists_the_valid_ones_on_native_wan(tiny_model):
    with pytest.raises(ConfigError, match=r"no component 'foo' in model_index.json \(valid: .*transformer.*vae"):
        _build(tiny_model("wan2.1-t2v"), foo="/x")


@pytest.mark.parametrize("backend", ["auto", "diffusers"])
def test_transformer_of_another_size_is_refused_naming_the_entries_before_loading(tiny_model, tmp_path, backend):
    model = tiny_model("wan2.1-t2v")
    other = _config_only(model / "transformer", tmp_path / "transformer", text_dim=64, out_channels=12)
    with pytest.raises(ModelLoadError) as e:
        _build(model, backend, transformer=str(other))
    message = str(e.value)
    assert f"--transformer-path {other}: component 'transformer' does not fit this model" in message
    assert "transformer.text_dim is 64, but text_encoder.d_model is 32" in message
    assert "transformer.out_channels is 12, but vae.z_dim is 16" in message


def test_the_factor_is_named_where_the_dit_packs_latents(tiny_model, tmp_path):
    model = tiny_model("flux.1")
    other = _config_only(model / "transformer", tmp_path / "transformer", in_channels=32)
    with pytest.raises(ModelLoadError, match=r"transformer.in_channels is 32, but 4 x vae.latent_channels is 64 "
                                             r"\(16\)"):
        _build(model, transformer=str(other))


def test_a_text_encoder_override_that_does_not_fit_is_named_as_the_culprit(tiny_model, tmp_path):
    model = tiny_model("wan2.1-t2v")
    other = _config_only(model / "text_encoder", tmp_path / "text_encoder", d_model=48)
    with pytest.raises(ModelLoadError, match="--text-encoder-path .*component 'text_encoder' does not fit"):
        _build(model, text_encoder=str(other))


def test_overrides_that_fit_each_other_are_accepted(tiny_model, tmp_path):
    model = tiny_model("wan2.1-t2v")
    index = read_model_index(model)
    paths = {"transformer": str(_config_only(model / "transformer", tmp_path / "t", text_dim=64)),
             "text_encoder": str(_config_only(model / "text_encoder", tmp_path / "e", d_model=64))}
    check_component_fit(paths, index)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_tiny_family_fits_its_own_components(tiny_model, family):
    model = tiny_model(family)
    index = read_model_index(model)
    assert index.class_name in FITS
    own = {name: str(model / name) for name, (_, cls) in index.components.items()
           if cls and (model / name / "config.json").is_file()}
    check_component_fit(own, index)


@pytest.mark.slow
def test_sglang_generate_reports_the_misfit_without_a_traceback(tiny_model, tmp_path):
    model = tiny_model("wan2.1-t2v")
    other = _config_only(model / "transformer", tmp_path / "transformer", text_dim=64)
    proc = run_cli("generate", "--model-path", model, "--prompt", "x", "--transformer-path", other)
    assert proc.returncode == 2
    assert "transformer.text_dim is 64, but text_encoder.d_model is 32" in proc.stderr
    assert "Traceback" not in proc.stderr
