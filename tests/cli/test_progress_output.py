"""What `sglang generate` tells a user whose output is not a terminal (a pipe, a log file, CI):
the request it runs, then the denoising steps as log lines."""

import re

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("backend", ["sglang", "diffusers"])
def test_generation_under_a_pipe_logs_the_request_and_its_steps(tiny_model, tmp_path, backend):
    model = tiny_model("wan2.1-t2v")
    proc = run_cli("generate", "--model-path", model, "--backend", backend, "--prompt", "a cat",
                   "--height", 32, "--width", 48, "--num-frames", 5, "--num-inference-steps", 3,
                   "--guidance-scale", 4.5, "--output-path", tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    log = proc.stderr
    assert re.search(rf"INFO sglang_diffusion.runtime.worker: generating: {re.escape(str(model))}, "
                     rf"WanPipeline \({backend} backend, attention [\w ]+\), 48x32, 5 frames, 3 steps, guidance 4.5, seed 1024", log), log
    assert re.search(r"INFO sglang_diffusion.progress: denoising: step 3/3, \d+\.\d s$", log, re.M), log
    assert log.index("generating:") < log.index("denoising: step 3/3")
    assert "\r" not in log and "%|" not in log  # no progress bar drawn into a pipe
    assert "sglang_diffusion.ops" not in log  # per-op kernel choices are debug lines
