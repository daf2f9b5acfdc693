"""A batching `sglang serve` (tiny FLUX.1, native): concurrent requests through the official openai
client share a forward, each image equals the same request served alone, and /metrics counts
the batch sizes."""

from __future__ import annotations

import base64
import io
import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import openai
import pytest
import requests
from PIL import Image

from tests.server.conftest import start_server

pytestmark = pytest.mark.slow


def _image(client: openai.OpenAI, seed: int) -> np.ndarray:
    answer = client.images.generate(prompt=f"a cube, take {seed}", size="32x32", response_format="b64_json",
                                    extra_body={"seed": seed, "num_inference_steps": 2})
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(answer.data[0].b64_json))), dtype=int)


def test_concurrent_requests_are_batched_equal_alone_and_counted(tiny_model, tmp_path):
    # a long delay: the three concurrent requests surely meet; the later ones run alone after it
    server = start_server(tiny_model("flux.1"), tmp_path / "out", "--max-batch-size", 4,
                          "--batching-delay-ms", 1500)
    try:
        client = openai.OpenAI(api_key="none", base_url=server.v1, max_retries=0)
        with ThreadPoolExecutor(3) as pool:
            together = list(pool.map(lambda seed: _image(client, seed), (1, 2, 3)))
        alone = [_image(client, seed) for seed in (1, 2, 3)]
        for a, b in zip(together, alone):
            assert np.abs(a - b).max() <= 1  # equal latents up to float rounding
        assert np.abs(together[0] - together[1]).max() > 10  # each its own prompt and seed
        metrics = requests.get(server.url + "/metrics", timeout=10).text
        count = float(re.search(r"^sglang_diffusion_batch_size_count (\S+)$", metrics, re.M)[1])
        total = float(re.search(r"^sglang_diffusion_batch_size_sum (\S+)$", metrics, re.M)[1])
        assert (count, total) == (6, 3 * 3 + 3 * 1)
        info = requests.get(server.url + "/model_info", timeout=10).json()
        assert info["batching"] == {"max_batch_size": 4, "batching_delay_ms": 1500.0, "refused": None}
    finally:
        server.stop()
