"""Multi-rank generation through the Engine and the CLI, as a user runs it: the guide's
`--num-gpus 4 --ulysses-degree=2 --ring-degree=2` gives the `--num-gpus 1` video; a rank killed
in the middle of a request ends it with a clear error and stops the other ranks, no hang."""

from __future__ import annotations

import os
import signal
import time

import imageio.v3 as iio
import numpy as np
import pytest

from sglang_diffusion.api import DiffGenerator
from sglang_diffusion.errors import RankFailedError
from tests.conftest import run_cli

pytestmark = pytest.mark.slow
MIN_PSNR = 40.0


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def test_guide_usp_command_gives_the_single_rank_video(tiny_model, tmp_path):
    common = ["generate", "--model-path", tiny_model("wan2.1-t2v"), "--prompt", "A curious raccoon",
              "--num-frames", 9, "--height", 64, "--width", 64, "--num-inference-steps", 4, "--seed", 7,
              "--output-file-name", "raccoon.mp4"]
    one = run_cli(*common, "--num-gpus", 1, "--output-path", tmp_path / "one")
    four = run_cli(*common, "--num-gpus", 4, "--ulysses-degree=2", "--ring-degree=2", "--output-path",
                   tmp_path / "four", timeout=600)
    assert one.returncode == 0, one.stderr
    assert four.returncode == 0, four.stderr
    assert "sp=4 (ulysses=2 x ring=2)" in four.stderr  # the layout is logged
    a = iio.imread(tmp_path / "one" / "raccoon.mp4", plugin="pyav")
    b = iio.imread(tmp_path / "four" / "raccoon.mp4", plugin="pyav")
    assert a.shape == b.shape == (9, 64, 64, 3)
    # The latents agree to ~1e-6 relative; a handful of the uint8 frame values round the other
    # way (6 of 110592 by one level, measured), which H.264 then spreads over their block.
    assert psnr(a, b) >= MIN_PSNR, psnr(a, b)


@pytest.mark.timeout(300)
def test_a_rank_killed_mid_request_ends_it_with_a_clear_error_and_no_hang(tiny_model):
    gen = DiffGenerator.from_pretrained(str(tiny_model("wan2.1-t2v")), num_gpus=2, ulysses_degree=2)
    try:
        victim = gen.engine._procs[1]

        def kill_after_first_step(done, total):
            if done == 1:
                os.kill(victim.pid, signal.SIGKILL)

        start = time.monotonic()
        with pytest.raises(RankFailedError, match=r"rank 1 exited unexpectedly \(killed by signal 9\)"):
            gen.engine.generate(_params(num_inference_steps=200), on_progress=kill_after_first_step)
        assert time.monotonic() - start < 60
        assert all(not p.is_alive() for p in gen.engine._procs)  # the other rank was stopped too
    finally:
        gen.shutdown()


def _params(**kw):
    from sglang_diffusion.config.loading import sampling_params_from_kwargs

    return sampling_params_from_kwargs(dict(prompt="a fox", height=64, width=64, num_frames=9, save_output=False,
                                            **kw))
