"""Multi-rank generation through the Engine and the CLI, as a user runs it: the guide's
`--num-gpus 4 --ulysses-degree=2 --ring-degree=2` and its config.json (2 ranks, vae_sp) give the
`--num-gpus 1` video; a rank killed in the middle of a request ends it with a clear error and
stops the other ranks, no hang."""

from __future__ import annotations

import json
import os
import signal
import time

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from sglang_diffusion.api import DiffGenerator
from sglang_diffusion.errors import RankFailedError
from tests.cli.test_generate import guide_config
from tests.conftest import run_cli

pytestmark = pytest.mark.slow
MIN_PSNR = 40.0


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


REQUEST = dict(prompt="A curious raccoon", num_frames=9, height=64, width=64, num_inference_steps=4, seed=7,
               output_file_name="raccoon.mp4")


# On a CPU fp32 is the default; on GPUs (NCCL) ask for it: the comparison is an fp32 one.
FP32 = dict(dit_precision="fp32", text_encoder_precisions=["fp32"]) if torch.cuda.is_available() else {}


def needs_ranks(n: int):
    """On CUDA every rank needs a device of its own."""
    return pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.device_count() < n,
                              reason=f"{n} ranks need {n} CUDA devices")


def cli_args(model, out) -> list:
    flags = [(f"--{k.replace('_', '-')}", v) for k, v in REQUEST.items()]
    flags += [(f"--{k.replace('_', '-')}", v if isinstance(v, str) else v[0]) for k, v in FP32.items()]
    return ["generate", "--model-path", model, *[x for pair in flags for x in pair], "--output-path", out]


@pytest.fixture(scope="module")
def single_rank_video(tiny_model, tmp_path_factory):
    """The video `--num-gpus 1` writes (through the same Engine, in this process)."""
    out = tmp_path_factory.mktemp("one-rank")
    with DiffGenerator.from_pretrained(str(tiny_model("wan2.1-t2v")), **FP32) as gen:
        gen.generate(**REQUEST, output_path=str(out))
    return iio.imread(out / "raccoon.mp4", plugin="pyav")


def assert_same_video(path, want):
    got = iio.imread(path, plugin="pyav")
    assert got.shape == want.shape == (9, 64, 64, 3)
    # The latents agree to ~1e-6 relative; a handful of the uint8 frame values round the other
    # way (6 of 110592 by one level, measured), which H.264 then spreads over their block.
    assert psnr(got, want) >= MIN_PSNR, psnr(got, want)


@needs_ranks(4)
def test_guide_usp_command_gives_the_single_rank_video(tiny_model, tmp_path, single_rank_video):
    four = run_cli(*cli_args(tiny_model("wan2.1-t2v"), tmp_path), "--num-gpus", 4, "--ulysses-degree=2",
                   "--ring-degree=2", timeout=600)
    assert four.returncode == 0, four.stderr
    assert "sp=4 (ulysses=2 x ring=2)" in four.stderr  # the layout is logged
    assert_same_video(tmp_path / "raccoon.mp4", single_rank_video)


@needs_ranks(2)
def test_guide_config_json_with_vae_sp_gives_the_single_rank_video(tiny_model, tmp_path):
    """The guide's config.json (num_gpus 2, sp_size 2, vae_tiling, vae_sp) through `sglang generate
    --config`, 448 pixels wide so that its 256-pixel VAE tiles (every 192) make 3 tiles: 2 on rank
    0, 1 on rank 1. The tiles decode exactly as on one rank; the DiT's SP rounding is all that differs."""
    from sglang_diffusion.config.loading import build_args, load_config_file

    exact = dict(precision="fp32", vae_precision="fp32", text_encoder_precisions=["fp32"]) \
        if torch.cuda.is_available() else {}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(guide_config(tiny_model("wan2.1-t2v"), tmp_path / "two", width=448, **exact)))
    two = run_cli("generate", "--config", path, timeout=600)
    assert two.returncode == 0, two.stderr
    assert "tiles split over 2 SP ranks" in two.stderr
    server, sampling = build_args({**load_config_file(path), "num_gpus": 1, "sp_degree": 1,
                                   "output_path": str(tmp_path / "one")})
    with DiffGenerator(server) as gen:
        gen.engine.generate(sampling)
    (want,), (got,) = [[iio.imread(p, plugin="pyav") for p in (tmp_path / d).glob("*.mp4")] for d in ("one", "two")]
    assert got.shape == want.shape == (5, 32, 448, 3)
    assert psnr(got, want) >= MIN_PSNR, psnr(got, want)


@needs_ranks(2)
def test_two_machines_with_node_rank_options_give_the_single_rank_video(tiny_model, tmp_path, single_rank_video):
    from sglang_diffusion.distributed.launch import free_port

    options = dict(num_gpus=2, ulysses_degree=2, nnodes=2, dist_init_addr=f"127.0.0.1:{free_port()}", **FP32)
    flags = [str(x) for k, v in options.items() if k not in FP32 for x in (f"--{k.replace('_', '-')}", v)]
    node1 = run_cli_background(*cli_args(tiny_model("wan2.1-t2v"), tmp_path), *flags, "--node-rank", 1)
    with DiffGenerator.from_pretrained(str(tiny_model("wan2.1-t2v")), node_rank=0, **options) as node0:
        node0.generate(**REQUEST, output_path=str(tmp_path))
    out1, err1 = node1.communicate(timeout=120)
    assert node1.returncode == 0, err1
    assert "node 1: ranks ready; serving node 0" in err1 and "saved" not in out1  # node 0 wrote the video
    assert_same_video(tmp_path / "raccoon.mp4", single_rank_video)


@needs_ranks(2)
def test_torchrun_launch_gives_the_single_rank_video(tiny_model, tmp_path, single_rank_video):
    import subprocess
    import sys

    from sglang_diffusion.distributed.launch import free_port

    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                           str(free_port()), "-m", "sglang_diffusion",
                           *map(str, cli_args(tiny_model("wan2.1-t2v"), tmp_path)), "--ring-degree", "2"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "2 rank(s): sp=2 (ulysses=1 x ring=2)" in proc.stderr  # num_gpus from torchrun's WORLD_SIZE
    assert proc.stdout.count("saved") == 1  # rank 0 wrote it
    assert_same_video(tmp_path / "raccoon.mp4", single_rank_video)


def run_cli_background(*args):
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-m", "sglang_diffusion", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@needs_ranks(2)
@pytest.mark.timeout(300)
def test_a_rank_killed_mid_request_ends_it_with_a_clear_error_and_no_hang(tiny_model):
    gen = DiffGenerator.from_pretrained(str(tiny_model("wan2.1-t2v")), num_gpus=2, ulysses_degree=2, **FP32)
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
