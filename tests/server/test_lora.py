"""LoRA on the diffusers backend: the server's routes (set, merge, unmerge, list; several adapters
by nickname; refused paths), `--lora-path` at start-up, and `Engine.call` across rank processes."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import requests
from PIL import Image

from sglang_diffusion.api import DiffGenerator
from sglang_diffusion.errors import InvalidRequestError
from sglang_diffusion.loader.lora import LoraSpec, list_loras, set_loras, unmerge_loras
from tests.server.conftest import API_KEY, write_tiny_lora

AUTH = {"Authorization": f"Bearer {API_KEY}"}
REQUEST = {"prompt": "a red cube", "size": "32x32", "seed": 5}


@pytest.fixture(scope="module")
def loras(flux_server, tiny_model):
    folder = flux_server.output_path.parent / "loras"
    model = tiny_model("flux.1")
    return {name: str(write_tiny_lora(model, folder / f"{name}.safetensors", seed)) for name, seed in
            (("a", 1), ("b", 2))}


def generate(server) -> np.ndarray:
    response = requests.post(server.v1 + "/images/generations", json=REQUEST, headers=AUTH, timeout=60)
    assert response.status_code == 200, response.text
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(response.json()["data"][0]["b64_json"]))))


def call(server, route: str, body: dict | None = None) -> requests.Response:
    return requests.post(server.v1 + route, json=body, headers=AUTH, timeout=60)


@pytest.fixture
def server(flux_server):
    yield flux_server
    assert call(flux_server, "/unmerge_lora_weights").status_code == 200  # leave the weights as found


def test_set_lora_changes_output_and_unmerge_restores_it_bit_for_bit(server, loras):
    base = generate(server)
    response = call(server, "/set_lora", {"lora_nickname": "a", "lora_path": loras["a"], "strength": 0.8})
    assert response.status_code == 200, response.text
    assert response.json()["active"]["transformer"] == [
        {"nickname": "a", "path": loras["a"], "merged": True, "strength": 0.8}]
    with_a = generate(server)
    assert not np.array_equal(with_a, base)
    assert call(server, "/unmerge_lora_weights").json()["active"] == {}
    assert np.array_equal(generate(server), base)
    assert call(server, "/merge_lora_weights").status_code == 200
    assert np.array_equal(generate(server), with_a)
    assert call(server, "/merge_lora_weights", {"strength": 0.3}).json()["active"]["transformer"][0]["strength"] == 0.3


def test_several_loras_loaded_at_once_switch_by_nickname(server, loras):
    base = generate(server)
    call(server, "/set_lora", {"lora_nickname": "a", "lora_path": loras["a"]})
    with_a = generate(server)
    call(server, "/set_lora", {"lora_nickname": "b", "lora_path": loras["b"]})
    with_b = generate(server)
    assert call(server, "/set_lora", {"lora_nickname": "a"}).status_code == 200  # loaded: no path needed
    assert np.array_equal(generate(server), with_a)
    both = call(server, "/set_lora", {"lora_nickname": ["a", "b"], "strength": [1.0, 0.5]})
    assert both.status_code == 200, both.text
    assert {a["nickname"] for a in both.json()["active"]["transformer"]} == {"a", "b"}
    with_both = generate(server)
    assert len({a.tobytes() for a in (base, with_a, with_b, with_both)}) == 4
    listed = requests.get(server.v1 + "/list_loras", headers=AUTH, timeout=10).json()
    assert {a["nickname"] for a in listed["loaded_adapters"]} >= {"a", "b"}


def test_refused_lora_paths_leave_the_weights_as_they_were(server, loras):
    call(server, "/set_lora", {"lora_nickname": "a", "lora_path": loras["a"]})
    with_a = generate(server)
    folder = server.output_path.parent / "loras"
    (folder / "garbage.safetensors").write_bytes(b"not a safetensors file")
    outside = folder.parent / "outside.safetensors"  # a valid LoRA, next to the allowed folder
    outside.write_bytes((folder / "b.safetensors").read_bytes())
    cases = [
        ({"lora_nickname": "x", "lora_path": str(outside)}, 403, "outside the allowed"),
        ({"lora_nickname": "x", "lora_path": str(folder / ".." / "outside.safetensors")}, 403, "outside the allowed"),
        ({"lora_nickname": "x", "lora_path": str(folder / "missing.safetensors")}, 400, "no such"),
        ({"lora_nickname": "x", "lora_path": str(folder / "garbage.safetensors")}, 422, "cannot load"),
        ({"lora_nickname": "x", "lora_path": str(folder.parent / "absent.safetensors")}, 403, "outside the allowed"),
        ({"lora_nickname": "x", "lora_path": "/etc/passwd\u0000"}, 403, "outside the allowed"),
        ({"lora_nickname": "x", "lora_path": "some-org/some-lora"}, 422, "cannot load"),  # an id: the hub's answer
        ({"lora_nickname": "nobody"}, 422, "not loaded"),
        ({"lora_nickname": "a", "lora_path": loras["b"]}, 422, "already loaded"),
        ({"lora_nickname": ["a", "b"], "strength": [1.0]}, 422, "one value per"),
        ({"lora_nickname": "a", "target": "unet"}, 422, "not a component"),
    ]
    for body, status, message in cases:
        response = call(server, "/set_lora", body)
        assert response.status_code == status and message in response.json()["error"]["message"], (body, response.text)
    listed = requests.get(server.v1 + "/list_loras", headers=AUTH, timeout=10).json()
    assert [a["nickname"] for a in listed["active"]["transformer"]] == ["a"]
    assert "x" not in {a["nickname"] for a in listed["loaded_adapters"]}
    assert np.array_equal(generate(server), with_a)


def test_lora_path_at_start_up_is_merged_and_unmerges_to_the_base(tiny_model, loras):
    request = dict(prompt="a red cube", height=32, width=32, num_inference_steps=1, seed=5, save_output=False,
                   return_frames=True)
    with DiffGenerator.from_pretrained(str(tiny_model("flux.1")), backend="diffusers") as plain:
        base = plain.generate(**request).frames[0]
    with DiffGenerator.from_pretrained(str(tiny_model("flux.1")), backend="diffusers", lora_path=loras["a"],
                                       lora_nickname="a") as gen:
        merged = gen.generate(**request).frames[0]
        assert not np.array_equal(merged, base)
        assert gen.engine.call(list_loras)["active"]["transformer"][0]["nickname"] == "a"
        gen.engine.call(unmerge_loras)
        assert np.array_equal(gen.generate(**request).frames[0], base)


@pytest.mark.slow
def test_engine_call_runs_on_every_rank(tiny_model, loras):
    request = dict(prompt="a red cube", height=32, width=32, num_inference_steps=1, seed=5, save_output=False,
                   return_frames=True)
    with DiffGenerator.from_pretrained(str(tiny_model("flux.1")), backend="diffusers", num_gpus=2) as two:
        base = two.generate(**request).frames[0]
        assert two.engine.call(set_loras, [LoraSpec("a", loras["a"])])["active"]["transformer"][0]["nickname"] == "a"
        assert not np.array_equal(two.generate(**request).frames[0], base)
        two.engine.call(unmerge_loras)
        assert np.array_equal(two.generate(**request).frames[0], base)
        with pytest.raises(InvalidRequestError, match="not loaded"):  # a rank's refusal reaches the caller
            two.engine.call(set_loras, [LoraSpec("nobody")])
