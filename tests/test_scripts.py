"""The README's setup commands on a machine like a new user's: scripts/install.sh and
scripts/test.sh on a PATH without nvcc or nvidia-smi (their --dry-run: the steps and the
decisions, nothing installed or run), and `pip wheel` with an older system pip/setuptools."""

import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
NO_CUDA = {"PATH": "/usr/bin:/bin", "NVCC_SEARCH": "/nonexistent/cuda/bin/nvcc"}


def script(name: str, *args, **env) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("NVCC", "CI", "TORCH_SPEC", "VENV")}
    return subprocess.run(["bash", str(REPO / "scripts" / name), *args], capture_output=True, text=True,
                          env={**clean, **NO_CUDA, **env}, timeout=60)


def test_test_script_skips_the_cuda_check_without_nvcc_and_says_why():
    proc = script("test.sh", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "skipped: nvcc not found (no CUDA toolkit: not on PATH nor at /nonexistent/cuda/bin/nvcc" in proc.stdout
    assert "CI (CI=true) requires it" in proc.stdout
    assert "would run: compile_cuda" not in proc.stdout and "-m pytest" in proc.stdout  # the rest still runs


def test_test_script_under_ci_requires_nvcc():
    proc = script("test.sh", "--dry-run", CI="true")
    assert proc.returncode == 1
    assert "nvcc not found" in proc.stderr and "CI requires the CUDA compile check" in proc.stderr
    assert "-m pytest" not in proc.stdout


def test_test_script_runs_the_cuda_check_where_nvcc_is():
    fake = Path(shutil.which("true"))
    proc = script("test.sh", "--dry-run", CI="true", NVCC=str(fake))
    assert proc.returncode == 0 and f"with {fake}" in proc.stdout and "would run: compile_cuda" in proc.stdout


def test_ci_makes_the_cuda_check_mandatory():
    ci = (REPO / ".ci" / "run").read_text()
    assert ci.index("export CI=true") < ci.index("scripts/test.sh")


def test_install_script_names_each_step_and_its_time_and_picks_the_cpu_torch_without_a_gpu(tmp_path):
    proc = script("install.sh", "--dry-run", VENV=str(tmp_path / "venv"))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for n in range(1, 6):
        assert f"== [{n}/5] " in out
    assert out.count("   done in ") == 5 and "== installed in " in out
    assert f"virtual environment: creating {tmp_path / 'venv'}" in out
    assert "torch: installing torch==2.13.0 (the CPU build: no GPU seen by nvidia-smi" in out
    assert "compiling the native extension _C" in out


@pytest.mark.slow
def test_wheel_builds_with_an_older_system_pip_and_setuptools(tmp_path):
    """The README's `pip wheel --no-build-isolation --no-deps -w dist .` with Debian's pip and
    setuptools (older than 77, without PEP 639 license expressions) on a copy of the sources."""
    python = Path("/usr/bin/python3")
    probe = subprocess.run([str(python), "-c", "import setuptools, wheel, pip; print(setuptools.__version__)"],
                           capture_output=True, text=True) if python.exists() else None
    if probe is None or probe.returncode != 0:
        pytest.skip("no system python3 with pip, setuptools and wheel")
    if int(probe.stdout.split(".")[0]) >= 77:
        pytest.skip(f"the system setuptools ({probe.stdout.strip()}) is not older than 77")
    files = subprocess.run(["git", "ls-files", "--", ":!tests", ":!benchmarks"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.split()
    src = tmp_path / "src"
    for name in files:
        if (REPO / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, src / name)
    proc = subprocess.run([str(python), "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-w", "dist", "."],
                          cwd=src, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (wheel,) = (src / "dist").glob("sglang_diffusion-*.whl")
    metadata = next(n for n in zipfile.ZipFile(wheel).namelist() if n.endswith("METADATA"))
    assert "License: Apache-2.0" in zipfile.ZipFile(wheel).read(metadata).decode()
