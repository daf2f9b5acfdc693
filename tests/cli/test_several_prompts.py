"""`sglang generate --prompt a b --seed 1 2`: one file per (prompt, seed), batched."""

import pytest
from PIL import Image

from tests.conftest import run_cli


@pytest.mark.slow
def test_two_prompts_and_two_seeds_write_four_files(tiny_model, tmp_path):
    proc = run_cli("generate", "--model-path", tiny_model("flux.1"), "--prompt", "a red cube", "a blue ball",
                   "--seed", 1, 2, "--height", 32, "--width", 32, "--num-inference-steps", 2,
                   "--max-batch-size", 4, "--output-path", tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    names = sorted(p.name for p in tmp_path.glob("*.png"))
    assert names == ["a_blue_ball_1.png", "a_blue_ball_2.png", "a_red_cube_1.png", "a_red_cube_2.png"]
    assert all(Image.open(tmp_path / name).size == (32, 32) for name in names)
    assert proc.stdout.count("saved ") == 4 and "batching compatible requests: up to 4" in proc.stderr
