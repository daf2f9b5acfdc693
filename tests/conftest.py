import os
import shutil
import subprocess
import sys
from pathlib import Path

# Triton fixes interpreter mode when a kernel is defined, i.e. when its module is first
# imported, which any test may do indirectly. Without a GPU the kernels can only run
# interpreted, so the mode is set here, before the first test module is collected.
if shutil.which("nvidia-smi") is None:
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The CPU's default precision is measured (bf16 where it pays: AMX, AVX-512-BF16), so the same
# test would compare bf16 outputs on one machine and fp32 on another; the suite's comparisons with
# diffusers are exact in fp32. tests/test_precision.py tests the measured choice; tests that
# want bf16 ask for it.
os.environ.setdefault("SGLD_CPU_PRECISION", "fp32")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_model(model_cache):
    """tiny_model(family) -> the folder of a tiny random-weight diffusers model, built once per session."""
    from sglang_diffusion.testing import cached_model

    return lambda family: cached_model(family, "tiny", cache_dir=model_cache)


def run_cli(*args, env=None, cwd=None, timeout=300) -> subprocess.CompletedProcess:
    """`sglang ...` in a subprocess, as a user would run it."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "sglang_diffusion", *map(str, args)], capture_output=True,
                          text=True, env=full_env, cwd=cwd, timeout=timeout)
