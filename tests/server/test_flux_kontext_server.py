"""`/v1/images/edits` on the native FLUX.1 Kontext pipeline (tiny model, backend auto) answers the
official openai client with an edit of the uploaded image at the requested size."""

from __future__ import annotations

import base64
import io

import numpy as np
import openai
import pytest
from PIL import Image

from tests.server.conftest import start_server

pytestmark = pytest.mark.slow


def test_openai_client_edits_with_kontext_natively(tiny_model, tmp_path):
    server = start_server(tiny_model("flux.1-kontext"), tmp_path / "out", "--num-inference-steps", 2)
    try:
        assert "pipeline FluxKontextPipeline on sglang backend (family flux.1-kontext)" in server.log()
        client = openai.OpenAI(api_key="unused", base_url=server.v1, max_retries=0)
        buffer = io.BytesIO()
        Image.fromarray((np.random.default_rng(0).random((64, 80, 3)) * 255).astype(np.uint8)).save(buffer, "PNG")
        result = client.images.edit(image=("in.png", buffer.getvalue()), prompt="make it blue", size="64x48",
                                    response_format="b64_json")
        assert Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json))).size == (64, 48)
    finally:
        server.stop()
