"""The sampling options as request fields of a running server (the tiny FLUX.1 server of
conftest, diffusers backend), through the official openai client and raw HTTP."""

from __future__ import annotations

import base64

import openai
import pytest
import requests

from tests.server.conftest import API_KEY

AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def client(flux_server):
    return openai.OpenAI(api_key=API_KEY, base_url=flux_server.v1, max_retries=0)


def _image(client, **kwargs) -> bytes:
    extra = {"seed": 3, **kwargs.pop("extra_body", {})}
    result = client.images.generate(prompt="a cat", size="32x32", response_format="b64_json", extra_body=extra,
                                    **kwargs)
    return base64.b64decode(result.data[0].b64_json)


def _post(server, body: dict) -> requests.Response:
    return requests.post(server.v1 + "/images/generations", json={"prompt": "a cat", **body}, headers=AUTH,
                         timeout=120)


def test_output_compression_of_the_openai_client_shrinks_a_jpeg(client):
    small, large = (_image(client, output_format="jpeg", output_compression=c) for c in (95, 0))
    assert len(large) > len(small)
    assert _image(client, output_format="jpeg", extra_body={"output_quality": 5}) == small


def test_flow_shift_changes_the_image_for_that_request_only(client):
    steps = {"num_inference_steps": 3}  # one step starts at sigma 1, which no shift moves
    plain = _image(client, extra_body=steps)
    assert _image(client, extra_body={**steps, "flow_shift": 9.0}) != plain
    assert _image(client, extra_body=steps) == plain  # the pipeline's own scheduler again


@pytest.mark.parametrize("body, status, words", [
    ({"resolution": "360p"}, 422, "max_resolution"),  # 640 x 368 on a server that makes at most 64
    ({"resolution": "360p", "size": "32x32"}, 422, "give resolution or size"),
    ({"orientation": "portrait"}, 422, "orientation applies to a resolution shortcut"),
    ({"output_quality": 50, "output_compression": 50}, 422, "output_quality or output_compression, not both"),
    ({"lora_strength": []}, 422, "lora_strength: give one value"),  # schema-valid; no adapter named
    ({"lora_strength": 0.5}, 422, "one per adapter of lora_nickname (0)"),
    ({"boundary_ratio": 2}, 400, "boundary_ratio"),  # the schema's bound
    ({"guidance_rescale": 0.5}, 422, "guidance_rescale: FluxPipeline does not take it"),
    ({"boundary_ratio": 0.5}, 422, "boundary_ratio: FluxPipeline has no second expert"),
])
def test_bad_or_inapplicable_option_is_refused_naming_it(flux_server, body, status, words):
    answer = _post(flux_server, body)
    assert answer.status_code == status and words in answer.text
