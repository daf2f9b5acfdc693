"""`/v1/images/generations` and `/v1/images/edits` on the native FLUX.2 pipeline (tiny model,
backend auto) answer the official openai client: text to image, and an edit of an uploaded
reference image."""

from __future__ import annotations

import base64
import io

import openai
import pytest
from PIL import Image

from tests.server.conftest import start_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("flux2-native")
    server = start_server(tiny_model("flux.2"), root / "out", "--num-inference-steps", 2)
    assert "pipeline Flux2Pipeline on sglang backend" in server.log()
    yield openai.OpenAI(api_key="unused", base_url=server.v1, max_retries=0)
    server.stop()


def decoded(result) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json)))


def test_generation_returns_an_image_of_the_requested_size(client):
    result = client.images.generate(prompt="a blue teapot", size="64x48", response_format="b64_json")
    assert decoded(result).size == (64, 48)


def test_edit_of_an_uploaded_image_returns_an_image_of_the_requested_size(client):
    buffer = io.BytesIO()
    Image.new("RGB", (80, 64), (200, 40, 10)).save(buffer, format="PNG")
    result = client.images.edit(image=("in.png", buffer.getvalue()), prompt="make it blue", size="64x64",
                                response_format="b64_json")
    assert decoded(result).size == (64, 64)
