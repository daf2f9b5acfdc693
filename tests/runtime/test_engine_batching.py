"""The Engine batching real requests (tiny Wan2.1, fp32): concurrent requests and several
prompts and seeds share forwards, and each output equals the same request run alone."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from sglang_diffusion.api import DiffGenerator
from sglang_diffusion.config.sampling_params import SamplingParams
from sglang_diffusion.errors import InvalidRequestError

REQUEST = dict(height=32, width=32, num_frames=5, num_inference_steps=2, guidance_scale=4.0, return_frames=True)


@pytest.fixture(scope="module")
def gen(tiny_model):
    # a long delay, so that the concurrent requests below surely meet
    with DiffGenerator.from_pretrained(str(tiny_model("wan2.1-t2v")), dit_precision="fp32", max_batch_size=4,
                                       batching_delay_ms=1500) as g:
        yield g


@pytest.fixture(scope="module")
def alone(tiny_model):
    """frames of a request run alone, by (prompt, seed)"""
    with DiffGenerator.from_pretrained(str(tiny_model("wan2.1-t2v")), dit_precision="fp32") as g:
        cache = {}

        def frames(prompt: str, seed: int) -> np.ndarray:
            if (prompt, seed) not in cache:
                result = g.generate(**REQUEST, prompt=prompt, seed=seed, save_output=False)
                assert result.batch_size == 1
                cache[prompt, seed] = result.frames[0]
            return cache[prompt, seed]

        yield frames


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    """uint8 frames of latents equal to float rounding"""
    return a.shape == b.shape and int(np.abs(a.astype(int) - b).max()) <= 1


@pytest.mark.slow
def test_several_prompts_and_seeds_run_batched_one_result_and_file_per_output(gen, alone, tmp_path):
    results = gen.generate(**REQUEST, prompt=["a red fox", "a green tree"], seed=[1, 2], output_path=str(tmp_path))
    assert [(r.prompt, r.seed) for r in results] == [("a red fox", 1), ("a red fox", 2), ("a green tree", 1),
                                                     ("a green tree", 2)]
    files = [r.files[0] for r in results]
    assert len(set(files)) == 4 and all(f.exists() for f in files)
    assert all(r.batch_size == 4 and len(r.files) == len(r.frames) == 1 for r in results)
    for r in results:
        assert _close(r.frames[0], alone(r.prompt, r.seed))


@pytest.mark.slow
def test_concurrent_requests_share_a_forward_and_equal_each_alone(gen, alone):
    requests = [("a red fox", 1), ("a green tree", 2), ("a red fox", 3)]
    results: dict[int, object] = {}

    def submit(i: int) -> None:
        prompt, seed = requests[i]
        params = SamplingParams(**REQUEST, prompt=prompt, seed=seed, save_output=False)
        results[i] = gen.engine.generate(params)

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(results) == [0, 1, 2]
    for i, (prompt, seed) in enumerate(requests):
        assert results[i].batch_size == 3 and results[i].seed == seed
        assert _close(results[i].frames[0], alone(prompt, seed))
    with pytest.raises(InvalidRequestError, match="generate_all"):
        gen.engine.generate(SamplingParams(**REQUEST, prompt=["a", "b"]))
