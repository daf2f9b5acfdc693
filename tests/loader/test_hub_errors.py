"""A Hugging Face id that cannot be had (offline, unreachable Hub) ends in one message that says
what was tried and how to fix it, with no pointer to a stack trace the user never sees."""

import pytest

from sglang_diffusion.distributed.launch import free_port
from tests.conftest import run_cli

pytestmark = pytest.mark.slow

MODEL = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"


@pytest.mark.parametrize("case", ["offline", "unreachable"])
def test_unavailable_hub_id_says_what_was_tried_and_how_to_fix_it(tmp_path, case):
    hf_home = tmp_path / "hf"
    env = {"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1" if case == "offline" else "0"}
    if case == "unreachable":
        env["HF_ENDPOINT"] = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    proc = run_cli("generate", "--model-path", MODEL, "--prompt", "a cat", env=env, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()  # one line: no traceback, no library warnings before it
    assert line.startswith(f"error: cannot find model {MODEL!r}: tried a local folder")
    assert f"the Hugging Face cache ({hf_home / 'hub'}" in line and "To fix: " in line
    assert "stacktrace" not in line and "stack trace" not in line
    if case == "offline":
        assert "HF_HUB_OFFLINE=1 forbids downloads" in line and "unset HF_HUB_OFFLINE" in line
    else:
        assert f"{env['HF_ENDPOINT']}: unreachable (" in line and "check the network" in line
