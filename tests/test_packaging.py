"""The wheel, as a user gets it: built with `pip wheel --no-build-isolation`, installed into a
fresh venv next to the CPU torch, its CLI and native extension working from there.

torch goes into the venv first, pinned to the version running here (torch==2.13.0+cpu on the
CPU machines, found through pip's configured find-links): a bare `torch` requirement would pull
a CUDA build, and _C only loads with the torch it was built against. The package's other
dependencies then come from the wheel's own metadata.
"""

import os
import subprocess
import sys
import zipfile
from importlib.metadata import version
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TORCH_PIN = f"torch=={version('torch')}"

pytestmark = pytest.mark.slow


def run(cmd, cwd, timeout=900):
    # Outside the repo and without PYTHONPATH, so nothing is imported from the source tree.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    result = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-w", dist, REPO], cwd=dist)
    (path,) = dist.glob("sglang_diffusion-*.whl")
    return path


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("venv")
    run([sys.executable, "-m", "venv", "--without-pip", root], cwd=root)
    # This environment's pip installs into the new venv (--python): no ensurepip, and
    # --no-compile skips byte-compiling torch, which would take minutes here.
    pip = [sys.executable, "-m", "pip", "--python", root / "bin" / "python", "install", "-q", "--no-compile"]
    run([*pip, TORCH_PIN], cwd=root)
    run([*pip, wheel], cwd=root)
    return root


def test_wheel_contains_the_native_extension(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    native = [n for n in names if n.startswith("sglang_diffusion/_C") and n.endswith(".so")]
    assert len(native) == 1, names


def test_wheel_carries_the_top_level_triton_kernels_as_a_subpackage(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    kernels = sorted(p.name for p in (REPO / "triton_kernels").glob("*.py"))
    assert kernels and all(f"sglang_diffusion/triton_kernels/{name}" in names for name in kernels), names
    assert not [n for n in names if n.startswith("triton_kernels/")]  # the bare name stays Triton's


def test_wheel_carries_the_web_page(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    files = sorted(p.name for p in (REPO / "sglang_diffusion" / "server" / "static").iterdir())
    assert "index.html" in files and all(f"sglang_diffusion/server/static/{name}" in names for name in files), names


def test_installed_wheel_serves_the_web_page_from_its_own_copy(venv):
    script = "from sglang_diffusion.server.routes_web import STATIC; print((STATIC / 'index.html').is_file(), STATIC)"
    result = run([venv / "bin" / "python", "-c", script], cwd=venv)
    assert result.stdout.startswith("True ") and str(venv) in result.stdout


def test_wheel_carries_the_demo_model_and_its_training_config(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    model = REPO / "sglang_diffusion" / "demo" / "model"
    shipped = [f"sglang_diffusion/demo/model/{p.relative_to(model)}" for p in model.rglob("*") if p.is_file()]
    assert any(name.endswith(".safetensors") for name in shipped)
    assert "sglang_diffusion/demo/train_config.json" in names and set(shipped) <= set(names), set(shipped) - set(names)


def test_installed_wheel_imports_the_triton_kernels_from_its_own_copy(venv):
    script = "import sglang_diffusion.triton_kernels.aot as m; print(m.__file__)"
    result = run([venv / "bin" / "python", "-c", script], cwd=venv)
    assert str(venv) in result.stdout and "site-packages/sglang_diffusion/triton_kernels" in result.stdout


def test_installed_wheel_imports_the_native_extension_without_torch_first(venv):
    result = run([venv / "bin" / "python", "-c", "import sglang_diffusion._C as c; print(c.__file__)"], cwd=venv)
    assert str(venv) in result.stdout  # the installed copy, not the source tree's


def test_installed_wheel_registers_the_native_ops(venv):
    script = "import torch, sglang_diffusion._C; print(torch.ops.sglang_diffusion_C.cpu_isa())"
    result = run([venv / "bin" / "python", "-c", script], cwd=venv)
    assert result.stdout.strip() in ("default", "avx2", "avx512")


def test_installed_wheel_runs_cli_help(venv):
    result = run([venv / "bin" / "sglang", "generate", "--help"], cwd=venv)
    assert "usage" in result.stdout.lower()
