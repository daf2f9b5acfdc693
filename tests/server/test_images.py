"""`sglang serve` with the tiny Flux model, through the official openai client and raw HTTP:
image generation, error bodies, the API key, the bounded queue, metrics, clean shutdown."""

from __future__ import annotations

import base64
import io
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import openai
import pytest
import requests
from PIL import Image

from tests.server.conftest import API_KEY
from tests.server.conftest import FLUX_QUEUE as QUEUE

AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def server(flux_server):
    return flux_server


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(api_key=API_KEY, base_url=server.v1, max_retries=0)


def _decode(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def _post(server, body: dict, headers=AUTH) -> requests.Response:
    return requests.post(server.v1 + "/images/generations", json=body, headers=headers, timeout=120)


def test_openai_client_b64_json_decodes_to_requested_size(client):
    result = client.images.generate(prompt="a red cube", size="48x32", response_format="b64_json")
    (item,) = result.data
    image = _decode(item.b64_json)
    assert image.format == "PNG" and image.size == (48, 32)
    assert result.size == "48x32"


def test_n_images_each_decoded_and_output_format_respected(client):
    result = client.images.generate(prompt="a cat", size="32x32", n=2, output_format="webp",
                                    response_format="b64_json")
    images = [_decode(d.b64_json) for d in result.data]
    assert [im.format for im in images] == ["WEBP", "WEBP"] and all(im.size == (32, 32) for im in images)
    jpeg = client.images.generate(prompt="a cat", size="32x32", output_format="jpeg", response_format="b64_json")
    assert _decode(jpeg.data[0].b64_json).format == "JPEG"


def test_same_seed_same_image_other_seed_different(server):
    body = {"prompt": "a cat", "size": "32x32", "seed": 7}
    a, b = (_post(server, body).json()["data"][0]["b64_json"] for _ in range(2))
    c = _post(server, {**body, "seed": 8}).json()["data"][0]["b64_json"]
    assert a == b and a != c


def test_url_answer_serves_the_stored_file(client, server):
    result = client.images.generate(prompt="a dog", size="32x32", response_format="url")
    url = result.data[0].url
    assert url.startswith(server.url + "/v1/images/img_")
    fetched = requests.get(url, headers=AUTH, timeout=30)
    assert fetched.status_code == 200 and fetched.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(fetched.content)).size == (32, 32)


@pytest.mark.parametrize("body,status,param", [
    ({"size": "32x32"}, 400, "prompt"),
    ({"prompt": ""}, 400, "prompt"),
    ({"prompt": "x", "size": "big"}, 400, "size"),
    ({"prompt": "x", "size": "33x32"}, 422, "size"),
    ({"prompt": "x", "size": "128x128"}, 422, "size"),
    ({"prompt": "x", "n": 0}, 400, "n"),
    ({"prompt": "x", "n": 11}, 400, "n"),
    ({"prompt": "x", "num_inference_steps": 0}, 400, "num_inference_steps"),
    ({"prompt": "x", "num_inference_steps": 100000}, 400, "num_inference_steps"),
    ({"prompt": "x", "response_format": "gif"}, 400, "response_format"),
    ({"prompt": "x", "guidance_scale": 1e308}, 400, "guidance_scale"),
    ({"prompt": "x", "stream": True}, 400, "stream"),
])
def test_malformed_request_gets_openai_error_body(server, body, status, param):
    response = _post(server, body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["message"] and error["type"] == "invalid_request_error"
    assert set(error) == {"message", "type", "param", "code"}


def test_body_that_is_not_json_is_400(server):
    response = requests.post(server.v1 + "/images/generations", data=b"{nope", timeout=10,
                             headers={**AUTH, "Content-Type": "application/json"})
    assert response.status_code == 400 and "JSON" in response.json()["error"]["message"]


def test_body_over_the_upload_limit_is_413(server):
    response = _post(server, {"prompt": "x" * (2 * 2**20)})
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"


def test_video_route_refuses_an_image_model_with_422(server):
    response = requests.post(server.v1 + "/videos", json={"prompt": "x"}, headers=AUTH, timeout=10)
    assert response.status_code == 422 and "images" in response.json()["error"]["message"]


def test_unknown_route_and_unknown_ids_are_404_without_path_traversal(server):
    for path in ["/v1/nope", "/v1/images/..%2F..%2Fjobs.sqlite3/content", "/v1/images/img_x/content",
                 "/v1/images/../../etc/passwd/content", "/v1/videos/..%2Fjobs.sqlite3",
                 "/v1/videos/video_00000000000000000000000000000000/content"]:
        response = requests.get(server.url + path, headers=AUTH, timeout=10)
        assert response.status_code == 404, path
        assert "error" in response.json()


def test_api_key_is_required_on_v1_routes_only(server):
    assert _post(server, {"prompt": "x"}, headers={}).status_code == 401
    wrong = _post(server, {"prompt": "x"}, headers={"Authorization": "Bearer wrong"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    assert requests.get(server.v1 + "/models", timeout=10).status_code == 401
    for open_path in ["/health", "/model_info", "/metrics"]:
        assert requests.get(server.url + open_path, timeout=10).status_code == 200, open_path


def test_models_and_model_info(client, server):
    (model,) = client.models.list().data
    assert model.id == server.proc.args[server.proc.args.index("--model-path") + 1]
    info = requests.get(server.url + "/model_info", timeout=10).json()
    assert info["task"] == "t2i" and info["pipeline"] == "FluxPipeline" and info["backend"] == "diffusers"
    assert info["parallel"]["num_gpus"] == 1


def test_concurrent_requests_within_the_queue_are_all_answered(server):
    # QUEUE requests fit in the queue even when none has started yet; one more fits only if the
    # worker took the first before the last arrived, which is a race under load.
    seeds = list(range(QUEUE))
    with ThreadPoolExecutor(len(seeds)) as pool:
        responses = list(pool.map(lambda s: _post(server, {"prompt": "a cat", "size": "32x32", "seed": s}), seeds))
    assert [r.status_code for r in responses] == [200] * len(seeds)
    images = [np.asarray(_decode(r.json()["data"][0]["b64_json"])) for r in responses]
    assert not np.array_equal(images[0], images[1])


def test_past_the_queue_bound_answers_429_with_retry_after(server):
    barrier = threading.Barrier(8)

    def post(seed):
        barrier.wait()
        return _post(server, {"prompt": "slow", "size": "64x64", "num_inference_steps": 6, "seed": seed})

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(post, range(8)))
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) <= {200, 429} and statuses.count(200) >= QUEUE and 429 in statuses
    refused = next(r for r in responses if r.status_code == 429)
    assert int(refused.headers["Retry-After"]) >= 1 and refused.json()["error"]["code"] == "queue_full"


def test_metrics_count_requests_by_route_and_status_and_stage_seconds(server):
    _post(server, {"prompt": "x", "size": "33x32"})
    text = requests.get(server.url + "/metrics", timeout=10).text
    assert 'sglang_diffusion_http_requests_total{method="POST",route="/v1/images/generations",status="422"}' in text
    assert 'sglang_diffusion_stage_seconds_count{stage="denoising"}' in text
    assert "sglang_diffusion_queue_depth 0.0" in text
    assert 'sglang_diffusion_http_request_seconds_bucket{le="0.01",route="/health"}' in text



def test_serve_refuses_per_request_options_at_start_up():
    from sglang_diffusion.cli import serve
    from sglang_diffusion.errors import ConfigError

    with pytest.raises(ConfigError, match="per request"):
        serve.run(["--model-path", "unused", "--prompt", "x"])
