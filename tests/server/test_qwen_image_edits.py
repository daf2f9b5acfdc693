"""`POST /v1/images/edits` on the tiny Qwen-Image-Edit-Plus model served natively (backend auto),
through the official openai client: one input image, and two (multipart `image[]`), which reach
the native pipeline as a list of image paths."""

from __future__ import annotations

import base64
import io

import numpy as np
import openai
import pytest
from PIL import Image

from tests.server.conftest import start_server

pytestmark = pytest.mark.slow


def png(h: int, w: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("qwen-edit-server")
    server = start_server(tiny_model("qwen-image-edit-plus"), root / "out", "--num-inference-steps", 2)
    yield server
    server.stop()


def test_openai_client_edits_natively_with_one_and_two_images(server):
    client = openai.OpenAI(api_key="unused", base_url=server.v1, max_retries=0, timeout=600)
    one = client.images.edit(image=("a.png", png(48, 80, 0)), prompt="put b in a", size="64x48",
                             response_format="b64_json", extra_body={"seed": 5})
    assert Image.open(io.BytesIO(base64.b64decode(one.data[0].b64_json))).size == (64, 48)
    two = client.images.edit(image=[("a.png", png(48, 80, 0)), ("b.png", png(40, 40, 1))], prompt="put b in a",
                             extra_body={"seed": 5},
                             size="64x48", response_format="b64_json")
    images = [np.asarray(Image.open(io.BytesIO(base64.b64decode(r.data[0].b64_json)))) for r in (one, two)]
    assert images[1].shape == (48, 64, 3)
    assert not np.array_equal(images[0], images[1])  # the second image reached the model
    log = server.log()
    assert "QwenImageEditPlusPipeline on sglang backend" in log and "Traceback" not in log
