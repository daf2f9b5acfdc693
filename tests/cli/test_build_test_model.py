"""`sglang build-test-model` writes a loadable model folder."""

import json

from tests.conftest import run_cli


def test_build_test_model_writes_a_diffusers_folder(tmp_path):
    proc = run_cli("build-test-model", "--family", "flux.1", "--output", tmp_path / "m")
    assert proc.returncode == 0, proc.stderr
    index = json.loads((tmp_path / "m" / "model_index.json").read_text())
    assert index["_class_name"] == "FluxPipeline"
    assert str(tmp_path / "m") in proc.stdout


def test_build_test_model_rejects_unknown_family(tmp_path):
    proc = run_cli("build-test-model", "--family", "sd9", "--output", tmp_path)
    assert proc.returncode == 2 and "invalid choice" in proc.stderr and "Traceback" not in proc.stderr


def test_build_test_model_writes_under_the_user_cache_by_default(tmp_path):
    cache, work = tmp_path / "cache", tmp_path / "work"
    work.mkdir()
    proc = run_cli("build-test-model", "--family", "flux.1", "--seed", 3, env={"XDG_CACHE_HOME": str(cache)}, cwd=work)
    assert proc.returncode == 0, proc.stderr
    folder = cache / "sglang_diffusion" / "models" / "flux.1-tiny-seed3"
    assert proc.stdout.strip() == str(folder) and (folder / "model_index.json").is_file()
    assert not list(work.iterdir())  # nothing in the working directory
