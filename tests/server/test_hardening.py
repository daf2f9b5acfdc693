"""Server hardening, each through a real `sglang serve` on a loopback port: no 500 from any input,
bounded labels, prompts and uploads, the API key before the body, a lenient model field,
abandoned requests stopped, bounded S3 stalls, consistent job states, expiry, a drain that
answers 503, and a bounded soak after which the server is back where it started."""

from __future__ import annotations

import io
import json
import random
import re
import signal
import socket
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from PIL import Image

from sglang_diffusion.server.jobs import JobStore
from tests.server.conftest import image_to_image_copy, start_server

KEY = "sk-from-a-file"
AUTH = {"Authorization": f"Bearer {KEY}"}
NAMES = ("served-a", "served-b")
TTL_S = 10  # of the video server's outputs
MANY_STEPS = 3000  # far longer than any test waits: a request that is not stopped would hold the engine


class StalledEndpoint:
    """A TCP endpoint on loopback that accepts connections and never answers (an S3 that hangs)."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # closed
                return
            self.held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


def stalled_s3_env(endpoint: StalledEndpoint) -> dict:
    return {"SGLANG_CLOUD_STORAGE_TYPE": "s3", "SGLANG_S3_BUCKET_NAME": "outputs", "SGLANG_S3_ENDPOINT_URL": endpoint.url,
            "SGLANG_S3_ACCESS_KEY_ID": "testing", "SGLANG_S3_SECRET_ACCESS_KEY": "testing"}


@pytest.fixture(scope="module")
def stalled():
    endpoint = StalledEndpoint()
    yield endpoint
    endpoint.close()


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory, stalled):
    """Tiny Flux (text-to-image) behind a key read from a file, under two served names, with a
    stalled bucket behind url answers."""
    root = tmp_path_factory.mktemp("hardening")
    (root / "key").write_text(KEY + "\n")
    s = start_server(tiny_model("flux.1"), root / "out", "--backend", "diffusers", "--api-key-file", root / "key",
                     "--served-model-name", *NAMES, "--num-inference-steps", 1, "--max-resolution", 64,
                     "--max-inference-steps", MANY_STEPS, "--max-upload-mb", 1, "--max-queue-size", 4,
                     "--max-prompt-chars", 3000, "--max-prompt-tokens", 300,
                     "--s3-connect-timeout-s", 1, "--s3-read-timeout-s", 1, "--s3-max-attempts", 1,
                     env=stalled_s3_env(stalled))
    yield s
    s.stop()


def post(server, path: str, body=None, *, raw: bytes | None = None, headers=AUTH, timeout=60) -> requests.Response:
    if raw is not None:
        return requests.post(server.v1 + path, data=raw, headers={**headers, "Content-Type": "application/json"},
                             timeout=timeout)
    return requests.post(server.v1 + path, json=body, headers=headers, timeout=timeout)


def metric(server, name: str, **labels) -> float:
    text = requests.get(server.url + "/metrics", timeout=10).text
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    match = re.search(rf"^{name}{{{re.escape(want)}}} (\S+)$" if labels else rf"^{name} (\S+)$", text, re.M)
    return float(match[1]) if match else 0.0


def proc_status(server) -> dict:
    """RSS (bytes), threads and open files of the server process, from /proc."""
    status = Path(f"/proc/{server.proc.pid}/status").read_text()
    rss = int(re.search(r"VmRSS:\s+(\d+) kB", status)[1]) * 1024
    threads = int(re.search(r"Threads:\s+(\d+)", status)[1])
    return {"rss": rss, "threads": threads, "files": len(list(Path(f"/proc/{server.proc.pid}/fd").iterdir()))}


def png(size=(32, 32)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def png_bomb(width=12000, height=12000) -> bytes:
    """A valid PNG of width x height black pixels, a few hundred KiB (432 MB once decoded)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    packer, row = zlib.compressobj(9), b"\0" * (1 + 3 * width)  # filter byte + RGB
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


# -- 4: no 500 from input ----------------------------------------------------------------------

@pytest.mark.parametrize("raw,param", [
    (b'{"prompt": "x", "guidance_scale": Infinity}', "guidance_scale"),
    (b'{"prompt": "x", "guidance_scale": -Infinity}', "guidance_scale"),
    (b'{"prompt": "x", "guidance_scale": NaN}', "guidance_scale"),
    (b'{"prompt": "x", "guidance_scale": 1e308}', "guidance_scale"),
    (b'{"prompt": "x", "guidance_scale": 1e999}', "guidance_scale"),
    (b'{"prompt": "x", "seed": 1e400}', "seed"),
    (b'{"prompt": "x", "guidance_scale": false}', "guidance_scale"),
    (b'{"prompt": "x", "n": true}', "n"),
    (b'{"prompt": "\\ud800"}', None),
])
def test_non_finite_and_out_of_range_values_are_400_naming_the_field(server, raw, param):
    response = post(server, "/images/generations", raw=raw)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    huge = post(server, "/images/generations", raw=b'{"prompt": "x", "width": 100000000000000000000000000000}')
    assert huge.status_code == 422 and huge.json()["error"]["param"] == "size"  # well-formed, over max_resolution


@pytest.mark.parametrize("path", ["/images/generations", "/videos", "/set_lora", "/merge_lora_weights"])
def test_every_json_route_refuses_deep_nesting_alike(server, path):
    for depth in (40, 100_000):
        deep = b'{"prompt": ' + b"[" * depth + b"]" * depth + b"}"
        response = post(server, path, raw=deep)
        assert response.status_code == 400 and "nests deeper" in response.json()["error"]["message"], response.text
    video = post(server, "/videos", raw=b'{"prompt": "x", "seconds": Infinity}')
    assert video.status_code in (400, 422) and "Traceback" not in server.log()
    lora = post(server, "/set_lora", {"lora_nickname": "a", "strength": 1e308})
    assert lora.status_code == 400 and lora.json()["error"]["param"] == "strength"


# -- 7: bounded metric labels -----------------------------------------------------------------

def test_random_methods_and_paths_do_not_grow_the_metric_series(server):
    def series() -> int:
        text = requests.get(server.url + "/metrics", timeout=10).text
        return sum(1 for line in text.splitlines() if line.startswith("sglang_diffusion_http_requests_total{"))

    rng = random.Random(0)
    for path in ("/health", "/nope"):  # the first of each kind makes its series
        requests.request("FOO", server.url + path, timeout=10)
    series()
    before = series()
    for _ in range(60):
        method = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(8))
        requests.request(method, server.url + f"/{rng.getrandbits(64):x}", timeout=10)
        requests.request(method, server.url + "/health", timeout=10)
    assert series() == before
    assert metric(server, "sglang_diffusion_http_requests_total", method="other", route="unmatched", status="404") >= 60


# -- 11: the model field ----------------------------------------------------------------------

def test_any_model_name_is_served_and_the_served_name_is_echoed(server):
    listed = requests.get(server.v1 + "/models", headers=AUTH, timeout=10).json()
    assert [m["id"] for m in listed["data"]] == list(NAMES)
    for asked, echoed in (("dall-e-3", NAMES[0]), (NAMES[1], NAMES[1]), (None, NAMES[0])):
        body = {"prompt": "x", "size": "16x16", **({"model": asked} if asked else {})}
        response = post(server, "/images/generations", body)
        assert response.status_code == 200 and response.json()["model"] == echoed, response.text


# -- 8: the API key -----------------------------------------------------------------------------

def test_api_key_is_checked_before_the_body_is_read(server):
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:  # promises a body it never sends
        sock.sendall(b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000000\r\n\r\n")
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    too_big = post(server, "/images/generations", raw=b"{" + b" " * (2 * 2**20) + b"}", headers={})
    assert too_big.status_code == 401  # refused for the key, not read up to the size limit


def test_docs_are_behind_the_key_health_is_not_and_the_scheme_is_case_insensitive(server):
    for path in ("/docs", "/redoc", "/openapi.json", "/v1/models"):
        assert requests.get(server.url + path, timeout=10).status_code == 401, path
        assert requests.get(server.url + path, headers={"Authorization": f"bearer {KEY}"}, timeout=10).ok, path
    assert requests.get(server.url + "/health", timeout=10).json()["status"] == "ok"
    assert KEY not in " ".join(server.proc.args)  # from a file: not in ps
    doc = requests.get(server.url + "/openapi.json", headers=AUTH, timeout=10).json()
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    generations = doc["paths"]["/v1/images/generations"]["post"]
    assert generations["security"] == [{"bearer": []}]
    assert {"400", "401", "404", "413", "422", "429", "503"} <= set(generations["responses"])
    assert "security" not in doc["paths"]["/health"]["get"]
    assert generations["requestBody"]["content"]["application/json"]["schema"]["properties"]["prompt"]["maxLength"] == 3000
    # an image model's server answers /v1/videos (422: use the image routes) but does not offer it,
    # and a text-to-image model does not offer edits
    assert not [p for p in doc["paths"] if p.startswith(("/v1/videos", "/v1/images/edits"))]


def test_lora_paths_need_lora_dirs_with_one_answer_whether_or_not_they_exist(server, tmp_path):
    existing = tmp_path / "a.safetensors"
    existing.write_bytes(b"x")
    answers = [post(server, "/set_lora", {"lora_nickname": "x", "lora_path": str(p)})
               for p in (existing, tmp_path / "absent.safetensors")]
    assert [a.status_code for a in answers] == [403, 403]
    messages = [a.json()["error"]["message"].replace(str(p), "P") for a, p in
                zip(answers, (existing, tmp_path / "absent.safetensors"))]
    assert messages[0] == messages[1] and "Hugging Face ids only" in messages[0]
    assert "LoRA adapters may come from Hugging Face ids only" in server.log()


# -- 3: prompt bounds -------------------------------------------------------------------------

def test_prompts_are_bounded_in_characters_and_tokens(server):
    for field in ("prompt", "negative_prompt"):
        long = post(server, "/images/generations", {"prompt": "x", field: "a" * 3001})
        assert long.status_code == 400 and long.json()["error"]["param"] == field
        assert "3001 characters" in long.json()["error"]["message"]
        wordy = post(server, "/images/generations", {"prompt": "x", field: "cat " * 600})  # 2400 chars
        assert wordy.status_code == 400 and "tokens" in wordy.json()["error"]["message"], wordy.text
    assert post(server, "/images/generations", {"prompt": "cat " * 50, "size": "16x16"}).status_code == 200


# -- 2: uploads, on a text-only model ---------------------------------------------------------

def test_text_only_model_refuses_an_upload_before_decoding_it(server):
    response = requests.post(server.v1 + "/images/edits", files={"image": ("bomb.png", png_bomb())},
                             data={"prompt": "x"}, headers=AUTH, timeout=30)
    assert response.status_code == 422 and "takes no input image" in response.json()["error"]["message"]


# -- 6: a stalled bucket ----------------------------------------------------------------------

def test_url_answer_falls_back_to_the_local_file_when_the_bucket_stalls(server):
    start = time.monotonic()
    response = post(server, "/images/generations", {"prompt": "x", "size": "16x16", "response_format": "url"})
    took = time.monotonic() - start
    assert response.status_code == 200 and took < 8, (took, response.text)
    url = response.json()["data"][0]["url"]
    assert url.startswith(server.v1 + "/images/img_")
    assert Image.open(io.BytesIO(requests.get(url, headers=AUTH, timeout=10).content)).size == (16, 16)
    assert "answering the local URL" in server.log() or "failed" in server.log()


# -- 1: abandoned requests --------------------------------------------------------------------

def _abandon(server, seconds: float, steps: int = MANY_STEPS) -> None:
    with pytest.raises(requests.Timeout):
        post(server, "/images/generations", {"prompt": "slow", "size": "16x16", "num_inference_steps": steps},
             timeout=seconds)


def test_a_client_that_goes_away_stops_its_request_within_a_step(server):
    running = metric(server, "sglang_diffusion_abandoned_requests_total", stage="running")
    queued = metric(server, "sglang_diffusion_abandoned_requests_total", stage="queued")
    first = threading.Thread(target=_abandon, args=(server, 3.0))
    first.start()
    time.sleep(1.0)  # the first is running by now; the second waits behind it
    _abandon(server, 1.0)
    first.join()
    start = time.monotonic()
    assert post(server, "/images/generations", {"prompt": "next", "size": "16x16"}).status_code == 200
    assert time.monotonic() - start < 10  # the engine is free: the abandoned one did not run to its end
    deadline = time.monotonic() + 10
    while metric(server, "sglang_diffusion_abandoned_requests_total", stage="running") < running + 1:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert metric(server, "sglang_diffusion_abandoned_requests_total", stage="queued") == queued + 1
    stopped = re.findall(rf"cancelled after (\d+) of {MANY_STEPS} denoising steps", server.log())
    assert stopped and int(stopped[-1]) < MANY_STEPS


# -- 5: one owner per output path -------------------------------------------------------------

@pytest.mark.slow
def test_a_second_server_on_the_same_output_path_refuses_to_start(server, tiny_model):
    with pytest.raises(AssertionError, match="in use by another server"):
        start_server(tiny_model("flux.1"), server.output_path, "--backend", "diffusers")
    assert requests.get(server.url + "/health", timeout=10).json()["status"] == "ok"


# -- the soak ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_bounded_soak_leaves_memory_files_and_threads_where_they_were(server):
    bad_png = png_bomb(4000, 4000)
    kinds = [
        lambda: post(server, "/images/generations", {"prompt": "a cat", "size": "16x16"}),
        lambda: post(server, "/images/generations", {"prompt": "x", "size": "16x16", "model": "other"}),
        lambda: post(server, "/images/generations", raw=b'{"prompt": "x", "guidance_scale": Infinity}'),
        lambda: post(server, "/videos", raw=b'{"prompt": ' + b"[" * 5000 + b"]" * 5000 + b"}"),
        lambda: post(server, "/images/generations", {"prompt": "x"}, headers={}),
        lambda: requests.request("BREW", server.url + "/v1/coffee", timeout=30),
        lambda: requests.post(server.v1 + "/images/edits", files={"image": ("b.png", bad_png)}, data={"prompt": "x"},
                              headers=AUTH, timeout=30),
        lambda: requests.get(server.v1 + "/videos/video_" + "0" * 32, headers=AUTH, timeout=30),
        lambda: post(server, "/images/generations", raw=b"{" + b" " * (2 * 2**20) + b"}"),
        lambda: requests.get(server.url + "/health", timeout=30),
    ]

    def run(count: int) -> list[int]:
        with ThreadPoolExecutor(8) as pool:
            return [r.status_code for r in pool.map(lambda i: kinds[i % len(kinds)](), range(count))]

    run(2 * len(kinds))  # warm up: lazily made threads and caches
    before = proc_status(server)
    statuses = run(300)
    assert 500 not in statuses and statuses.count(200) >= 30, sorted(set(statuses))
    time.sleep(1.0)
    after = proc_status(server)
    assert after["rss"] - before["rss"] < 100 * 2**20, (before, after)
    assert after["files"] - before["files"] <= 4 and after["threads"] - before["threads"] <= 4, (before, after)
    assert requests.get(server.url + "/health", timeout=10).json() == {"status": "ok", "queue_depth": 0}
    assert "Traceback" not in server.log()


# -- 2: uploads, on an image-to-image model ---------------------------------------------------

@pytest.fixture(scope="module")
def edit_server(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("hardening-edits")
    s = start_server(image_to_image_copy(tiny_model("flux.1"), root / "flux-img2img"), root / "out", "--backend",
                     "diffusers", "--num-inference-steps", 1, "--max-upload-mb", 1)
    yield s
    s.stop()


@pytest.mark.slow
def test_pixel_bombs_are_refused_from_their_header_and_memory_stays_flat(edit_server):
    bomb = png_bomb()
    assert len(bomb) < 2**20
    def send():
        return requests.post(edit_server.v1 + "/images/edits", files={"image": ("bomb.png", bomb)},
                             data={"prompt": "x", "size": "32x32"}, timeout=60)

    first = send()
    assert first.status_code == 413 and first.json()["error"]["param"] == "image", first.text
    assert "12000x12000" in first.json()["error"]["message"]
    before = proc_status(edit_server)["rss"]
    for _ in range(20):
        assert send().status_code == 413
    assert proc_status(edit_server)["rss"] - before < 200 * 2**20


def test_several_images_as_repeated_parts_or_image_brackets_are_all_read(edit_server):
    for field in ("image", "image[]"):
        files = [(field, ("a.png", png())), (field, ("b.png", b"not an image"))]
        response = requests.post(edit_server.v1 + "/images/edits", files=files, data={"prompt": "x", "size": "32x32"},
                                 timeout=60)
        assert response.status_code == 400 and response.json()["error"]["param"] == "image", response.text


# -- 5, 3, 6: video jobs behind a stalled bucket, and expiry ------------------------------------

@pytest.fixture(scope="module")
def video_server(tiny_model, tmp_path_factory, stalled):
    s = start_server(tiny_model("wan2.1-t2v"), tmp_path_factory.mktemp("hardening-videos") / "out",
                     "--num-inference-steps", 1, "--s3-connect-timeout-s", 1, "--s3-read-timeout-s", 3,
                     "--s3-max-attempts", 1, "--output-ttl-s", TTL_S, "--max-prompt-tokens", 100000,
                     env=stalled_s3_env(stalled))
    yield s
    s.stop()


def wait_video(server, video_id, until, timeout=60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        video = requests.get(server.v1 + f"/videos/{video_id}", timeout=10).json()
        if video["status"] in until:
            return video
        time.sleep(0.1)
    raise AssertionError(f"{video_id} is {video['status']}, not {until}, after {timeout} s")


def create_video(server, **body) -> dict:
    response = requests.post(server.v1 + "/videos", json={"size": "32x32", "num_frames": 5, **body}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def test_video_server_documents_its_routes_without_security(video_server):
    doc = requests.get(video_server.url + "/openapi.json", timeout=10).json()
    assert "409" in doc["paths"]["/v1/videos/{video_id}/content"]["get"]["responses"]
    assert "securitySchemes" not in doc.get("components", {})
    # a text-to-video model answers image requests as one frame, and takes no input image to edit
    assert "/v1/images/generations" in doc["paths"] and "/v1/images/edits" not in doc["paths"]
    assert not any("security" in op for ops in doc["paths"].values() for op in ops.values())


@pytest.mark.slow
def test_delete_during_the_upload_cancels_once_and_for_all(video_server):
    job = create_video(video_server, prompt="uploading")
    wait_video(video_server, job["id"], ("in_progress",))
    deadline = time.monotonic() + 30
    while f"video job {job['id']}: storing" not in video_server.log():  # left the engine: now uploading
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert requests.delete(video_server.v1 + f"/videos/{job['id']}", timeout=10).json()["cancelled"] is True
    deadline = time.monotonic() + 30
    while list(video_server.output_path.joinpath("videos").glob(f"{job['id']}*")):  # until the upload gives up
        assert time.monotonic() < deadline
        time.sleep(0.1)
    video = wait_video(video_server, job["id"], ("failed", "completed", "expired"))
    assert video["status"] in ("failed", "expired") and video["error"]["code"] == "cancelled"  # expired: keeps why
    assert "stored" in video["error"]["message"] and "before it started" not in video["error"]["message"]
    assert metric(video_server, "sglang_diffusion_video_jobs_finished_total", status="completed") == 0
    assert metric(video_server, "sglang_diffusion_video_jobs_finished_total", status="cancelled") == 1
    assert "cancelled while its file was stored" in video_server.log()


@pytest.mark.slow
def test_jobs_stay_small_list_records_are_bounded_and_finished_jobs_expire(video_server):
    prompt = "a long prompt " * 200
    job = create_video(video_server, prompt=prompt)
    done = wait_video(video_server, job["id"], ("completed", "failed"))
    assert done["status"] == "completed" and done["expires_at"] == done["completed_at"] + TTL_S
    assert requests.get(video_server.v1 + f"/videos/{job['id']}/content", timeout=10).status_code == 200
    stored = JobStore(video_server.output_path / "jobs.sqlite3").get(job["id"])
    assert stored.prompt == prompt and prompt not in json.dumps(stored.params)  # stored once
    listed = requests.get(video_server.v1 + "/videos", timeout=10).json()["data"]
    record = next(v for v in listed if v["id"] == job["id"])
    assert len(record["prompt"]) < 300 and prompt.startswith(record["prompt"].removesuffix("..."))
    assert requests.get(video_server.v1 + f"/videos/{job['id']}", timeout=10).json()["prompt"] == prompt
    expired = wait_video(video_server, job["id"], ("expired",), timeout=TTL_S + 20)
    assert expired["url"] is None
    assert not list(video_server.output_path.joinpath("videos").glob(f"{job['id']}*"))
    gone = requests.get(video_server.v1 + f"/videos/{job['id']}/content", timeout=10)
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "expired"
    assert job["id"] in {v["id"] for v in requests.get(video_server.v1 + "/videos", timeout=10).json()["data"]}


# -- 10: the drain ------------------------------------------------------------------------------

@pytest.mark.slow
def test_sigterm_drains_with_503_and_retry_after_while_the_port_stays_open(tiny_model, tmp_path):
    server = start_server(tiny_model("flux.1"), tmp_path / "out", "--backend", "diffusers",
                          "--num-inference-steps", 1, "--max-inference-steps", 400)
    try:
        # 400 steps: seconds of work even on a quiet machine, so the drain is still going when the
        # new request arrives (60 steps could finish, and the server stop, before it did)
        body = {"prompt": "in flight", "size": "16x16", "num_inference_steps": 400}
        with ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(lambda: requests.post(server.v1 + "/images/generations", json=body, timeout=300))
            time.sleep(1.0)
            server.proc.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            assert not in_flight.done()
            refused = requests.post(server.v1 + "/images/generations", json={"prompt": "new"}, timeout=10)
            health = requests.get(server.url + "/health", timeout=10)
            assert refused.status_code == 503 and int(refused.headers["Retry-After"]) >= 1
            assert refused.json()["error"]["code"] == "shutting_down"
            assert (health.status_code, health.json()["status"]) == (503, "shutting_down")
            assert in_flight.result().status_code == 200  # the work in flight finished
        assert server.proc.wait(60) == -signal.SIGTERM and "server stopped" in server.log()
    finally:
        server.stop(signal.SIGKILL)
