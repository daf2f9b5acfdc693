"""Run-time LoRA on a native pipeline (the tiny Wan2.1 T2V server, `--backend auto`): the LoRA routes
(set, switch by nickname, two adapters at once with their strengths, unmerge back to the base bit for
bit, merge again), a video request naming its own adapters, refused adapters leaving the weights as
they were; the openai client makes the videos, requests drives the LoRA routes."""

from __future__ import annotations

import time

import requests
import imageio.v3 as iio
import numpy as np
import openai
import pytest

from tests.server.conftest import start_server, write_tiny_lora

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:The Sora API:DeprecationWarning")]
FAMILY = "wan2.1-t2v"


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("wan-lora")
    (root / "loras").mkdir()
    s = start_server(tiny_model(FAMILY), root / "out", "--num-inference-steps", 2, "--lora-dirs", root / "loras")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def loras(server, tiny_model):
    folder = server.output_path.parent / "loras"
    return {name: str(write_tiny_lora(tiny_model(FAMILY), folder / f"{name}.safetensors", seed))
            for name, seed in (("a", 1), ("b", 2))}


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(api_key="unused", base_url=server.v1, max_retries=0)


def video(client, **extra) -> np.ndarray:
    """The decoded frames of a finished 32x32, 5-frame video (seed 3), or the failed job. The
    client sends a form, whose fields take one value; a list goes as JSON."""
    body = {"prompt": "a lighthouse", "size": "32x32", "num_frames": 5, "seed": 3, **extra}
    if any(isinstance(v, list) for v in extra.values()):
        response = requests.post(f"{client.base_url}videos", json=body, timeout=30)
        assert response.status_code == 200, response.text
        job = client.videos.retrieve(response.json()["id"])
    else:
        job = client.videos.create(prompt=body.pop("prompt"), size=body.pop("size"), extra_body=body)
    deadline = time.monotonic() + 120
    while (job := client.videos.retrieve(job.id)).status not in ("completed", "failed"):
        assert time.monotonic() < deadline, f"{job.id} still {job.status}"
        time.sleep(0.05)
    if job.status == "failed":
        return job
    return iio.imread(client.videos.download_content(job.id).read(), extension=".mp4", plugin="pyav")


def lora(server, route: str, body: dict | None = None) -> requests.Response:
    return requests.post(f"{server.v1}/{route}", json=body, timeout=60)


def test_routes_switch_adapters_and_unmerge_gives_the_base_bit_for_bit(server, client, loras):
    base = video(client)
    response = lora(server, "set_lora", {"lora_nickname": "a", "lora_path": loras["a"], "strength": 0.8})
    assert response.status_code == 200, response.text
    assert response.json()["active"] == {"transformer": [
        {"nickname": "a", "path": loras["a"], "merged": True, "strength": 0.8}]}
    with_a = video(client)
    assert lora(server, "set_lora", {"lora_nickname": "b", "lora_path": loras["b"]}).status_code == 200
    with_b = video(client)
    assert lora(server, "set_lora", {"lora_nickname": "a", "strength": 0.8}).status_code == 200  # loaded: by name
    assert np.array_equal(video(client), with_a)
    both = lora(server, "set_lora", {"lora_nickname": ["a", "b"], "strength": [1.0, 0.5]})
    assert [(x["nickname"], x["strength"]) for x in both.json()["active"]["transformer"]] == [("a", 1.0), ("b", 0.5)]
    with_both = video(client)
    assert len({x.tobytes() for x in (base, with_a, with_b, with_both)}) == 4
    assert lora(server, "unmerge_lora_weights").json()["active"] == {}
    assert np.array_equal(video(client), base)  # the base weights, bit for bit, after four merges
    assert lora(server, "merge_lora_weights").status_code == 200  # the last set again
    assert np.array_equal(video(client), with_both)
    listed = requests.get(f"{server.v1}/list_loras", timeout=10).json()
    assert [x["nickname"] for x in listed["loaded_adapters"]] == ["a", "b"]
    assert lora(server, "unmerge_lora_weights").status_code == 200


def test_a_request_naming_its_adapters_runs_with_them_and_the_next_one_without(server, client, loras):
    lora(server, "set_lora", {"lora_nickname": "a", "lora_path": loras["a"], "strength": 0.8})
    with_a = video(client)
    lora(server, "unmerge_lora_weights")
    base = video(client)
    assert np.array_equal(video(client, lora_nickname="a", lora_strength=0.8), with_a)
    assert np.array_equal(video(client), base)  # a request naming none: the server's (no adapter now)
    lora(server, "set_lora", {"lora_nickname": ["a", "b"], "strength": [1.0, 0.5]})
    with_both = video(client)
    assert np.array_equal(video(client, lora_nickname=["a", "b"], lora_strength=[1.0, 0.5]), with_both)
    failed = video(client, lora_nickname="nobody")
    assert failed.status == "failed" and "not loaded" in failed.error.message
    bad = requests.post(f"{server.v1}/videos", json={"prompt": "x", "lora_nickname": "a", "lora_strength": [1, 2]},
                        timeout=30)
    assert bad.status_code == 422 and "one per adapter" in bad.json()["error"]["message"]
    assert np.array_equal(video(client), with_both)
    lora(server, "unmerge_lora_weights")


def test_refused_adapters_leave_the_weights_as_they_were(server, client, loras):
    lora(server, "set_lora", {"lora_nickname": "a", "lora_path": loras["a"], "strength": 0.8})
    with_a = video(client)
    folder = server.output_path.parent / "loras"
    (folder / "garbage.safetensors").write_bytes(b"not a safetensors file")
    outside = folder.parent / "outside.safetensors"
    outside.write_bytes((folder / "b.safetensors").read_bytes())
    for body, status, message in [
            ({"lora_nickname": "x", "lora_path": str(outside)}, 403, "outside the allowed"),
            ({"lora_nickname": "x", "lora_path": str(folder / "garbage.safetensors")}, 422, "cannot read"),
            ({"lora_nickname": ["a", "x"], "lora_path": [None, str(folder / "missing.safetensors")]}, 400, "no such"),
            ({"lora_nickname": "a", "target": "transformer_2"}, 422, "not a component")]:
        response = lora(server, "set_lora", body)
        assert response.status_code == status and message in response.json()["error"]["message"], response.text
    assert np.array_equal(video(client), with_a)
    listed = requests.get(f"{server.v1}/list_loras", timeout=10).json()
    assert "x" not in {x["nickname"] for x in listed["loaded_adapters"]}
    lora(server, "unmerge_lora_weights")


def test_python_api_on_two_ranks_applies_adapters_on_every_rank(tiny_model, tmp_path):
    """Ulysses over 2 gloo ranks splits the tokens: a rank without the adapter would change the output."""
    from sglang_diffusion.api import DiffGenerator

    path = str(write_tiny_lora(tiny_model(FAMILY), tmp_path / "a.safetensors", 1))
    request = dict(prompt="a lighthouse", height=32, width=32, num_frames=5, num_inference_steps=2, seed=3,
                   save_output=False, return_frames=True)
    with DiffGenerator.from_pretrained(str(tiny_model(FAMILY))) as one:
        one.set_lora("a", path, strength=0.8)
        expected = one.generate(**request).frames[0].astype(int)
    with DiffGenerator.from_pretrained(str(tiny_model(FAMILY)), num_gpus=2, ulysses_degree=2) as two:
        base = two.generate(**request).frames[0]
        listed = two.set_lora("a", path, strength=0.8)
        assert listed["active"]["transformer"][0]["strength"] == 0.8 and two.list_loras() == listed
        assert np.abs(two.generate(**request).frames[0].astype(int) - expected).max() <= 1  # uint8 rounding
        two.unmerge_lora()
        assert np.array_equal(two.generate(**request).frames[0], base)
        assert np.abs(two.generate(**request, lora_adapters="a", lora_strength=0.8).frames[0].astype(int)
                      - expected).max() <= 1
