"""`POST /v1/images/edits` (multipart) on the tiny Flux weights served as FluxImg2ImgPipeline."""

from __future__ import annotations

import base64
import io

import openai
import pytest
import requests
from PIL import Image

from tests.server.conftest import API_KEY, image_to_image_copy, start_server


def png(size=(32, 32), color=(10, 200, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("edits")
    s = start_server(image_to_image_copy(tiny_model("flux.1"), root / "flux-img2img"), root / "out",
                     "--num-inference-steps", 2, "--max-upload-mb", 1)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(api_key="unused", base_url=server.v1, max_retries=0)


def edit(server, files, **fields) -> requests.Response:
    return requests.post(server.v1 + "/images/edits", files=files, data={"prompt": "make it red", **fields},
                         timeout=60)


def test_openai_client_edit_returns_an_image_of_the_requested_size(client):
    result = client.images.edit(image=("in.png", png()), prompt="make it red", size="32x32",
                                response_format="b64_json")
    image = Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json)))
    assert image.size == (32, 32) and result.size == "32x32"


def test_edit_with_url_answer_and_n(server):
    response = edit(server, {"image": ("in.png", png())}, size="32x32", n="2", response_format="url")
    assert response.status_code == 200, response.text
    urls = [d["url"] for d in response.json()["data"]]
    assert len(urls) == 2 and all(requests.get(u, timeout=10).status_code == 200 for u in urls)


def test_uploaded_file_names_never_become_paths(server):
    response = edit(server, {"image": ("../../../evil.png", png())}, size="32x32")
    assert response.status_code == 200
    root = server.output_path.parent
    assert not list(root.rglob("evil.png")) and not list((server.output_path / "uploads").iterdir())


@pytest.mark.parametrize("files,fields,status,param", [
    ({}, {}, 400, "image"),
    ({"image": ("in.png", b"not an image at all")}, {}, 400, "image"),
    ({"image": ("big.png", b"\0" * (2 * 2**20))}, {}, 413, None),
    ({"image": ("in.png", png())}, {"size": "32"}, 400, "size"),
    ({"image": ("in.png", png())}, {"n": "zero"}, 400, "n"),
    ({"image": ("in.png", png()), "mask": ("mask.png", png())}, {}, 422, None),
])
def test_bad_edits_are_refused_with_openai_errors(server, files, fields, status, param):
    response = edit(server, files, **fields)
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"] == param


def test_prompt_is_required(server):
    response = requests.post(server.v1 + "/images/edits", files={"image": ("in.png", png())}, timeout=30)
    assert response.status_code == 400 and response.json()["error"]["param"] == "prompt"


def test_edit_on_a_text_only_model_is_422(flux_server):
    response = requests.post(flux_server.v1 + "/images/edits", files={"image": ("in.png", png())},
                             data={"prompt": "x", "size": "32x32"},
                             headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60)
    assert response.status_code == 422 and "input image" in response.json()["error"]["message"]
