"""Finding models: local folders, Hugging Face ids through the hub cache (offline), and clear failures."""

import shutil

import numpy as np
import pytest

from sglang_diffusion.errors import ModelLoadError
from sglang_diffusion.loader.resolve import read_model_index, resolve_model_path


def _fake_hub_cache(cache, repo_id, folder):
    """Lay `folder` out as huggingface_hub's cache holds a downloaded snapshot of `repo_id`."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return repo / "snapshots" / commit


def test_hf_id_resolves_from_the_hub_cache_offline(tiny_model, tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    snapshot = _fake_hub_cache(cache, "tiny-org/tiny-flux", tiny_model("flux.1"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    assert resolve_model_path("tiny-org/tiny-flux").resolve() == snapshot.resolve()


def test_generate_from_a_cached_hf_id_in_a_subprocess(tiny_model, tmp_path):
    from tests.conftest import run_cli

    cache = tmp_path / "hub"
    _fake_hub_cache(cache, "tiny-org/tiny-flux", tiny_model("flux.1"))
    proc = run_cli("generate", "--model-path", "tiny-org/tiny-flux", "--prompt", "x", "--height", 32, "--width", 32,
                   "--num-inference-steps", 1, "--output-path", tmp_path / "out",
                   env={"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr
    assert len(list((tmp_path / "out").glob("*.png"))) == 1


def test_unknown_id_offline_names_everything_that_was_tried(tmp_path, monkeypatch):
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError) as info:
        resolve_model_path("nobody/no-such-model")
    text = str(info.value)
    assert "local folder" in text and f"the Hugging Face cache ({tmp_path}: nobody/no-such-model is not there" in text
    assert "HF_HUB_OFFLINE=1 forbids downloads" in text and "To fix: unset HF_HUB_OFFLINE" in text


def test_file_and_bad_index_are_clear_errors(tmp_path):
    f = tmp_path / "file.bin"
    f.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="is a file"):
        resolve_model_path(str(f))
    (tmp_path / "model_index.json").write_text("{broken")
    with pytest.raises(ModelLoadError, match="cannot read"):
        read_model_index(tmp_path)


def test_model_index_lists_components_and_extras(tiny_model):
    index = read_model_index(tiny_model("wan2.1-t2v"))
    assert index.class_name == "WanPipeline"
    assert index.components["transformer"] == ("diffusers", "WanTransformer3DModel")
    assert index.text_encoders == ["text_encoder"]
