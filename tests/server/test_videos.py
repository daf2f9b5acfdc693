"""Video jobs on the tiny Wan2.1 models: the openai client's create / retrieve / download, progress
and cancellation, listing, deletion, and jobs across a drain and a crash."""

from __future__ import annotations

import base64
import io
import signal
import time

import imageio.v3 as iio
import openai
import pytest
import requests
from PIL import Image

from sglang_diffusion.server.jobs import JobStore
from tests.server.conftest import start_server

# The openai client marks its videos API deprecated (for OpenAI's own service); ours stays.
pytestmark = pytest.mark.filterwarnings("ignore:The Sora API:DeprecationWarning")


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    s = start_server(tiny_model("wan2.1-t2v"), tmp_path_factory.mktemp("videos") / "out", "--num-inference-steps", 2)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(api_key="unused", base_url=server.v1, max_retries=0)


def wait_for(client, video_id, until=("completed", "failed"), timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        video = client.videos.retrieve(video_id)
        if video.status in until:
            return video
        time.sleep(0.1)
    raise AssertionError(f"{video_id} still {video.status} after {timeout} s")


def slow_job(client, steps=400):
    return client.videos.create(prompt="slow", size="32x32", extra_body={"num_frames": 5, "num_inference_steps": steps})


def frames_of(content: bytes):
    return iio.imread(content, extension=".mp4", plugin="pyav")


def test_create_poll_download_gives_mp4_with_requested_frames(client):
    video = client.videos.create(prompt="a cat", size="48x32", extra_body={"num_frames": 5, "fps": 8})
    assert video.status == "queued" and video.size == "48x32" and video.object == "video"
    done = wait_for(client, video.id)
    assert done.status == "completed" and done.progress == 100 and done.completed_at >= done.created_at
    content = client.videos.download_content(done.id).read()
    assert frames_of(content).shape == (5, 32, 48, 3)
    assert iio.immeta(content, extension=".mp4", plugin="pyav")["fps"] == 8


def test_json_body_with_seconds_and_fps(server, client):
    response = requests.post(server.v1 + "/videos", json={"prompt": "a dog", "seconds": "1", "fps": 4,
                                                          "size": "32x32", "seed": 3}, timeout=30)
    assert response.status_code == 200, response.text
    done = wait_for(client, response.json()["id"])
    assert done.status == "completed"
    # 1 s at 4 fps asks for 4 frames; Wan makes 4k+1 and the record says what was made
    assert frames_of(client.videos.download_content(done.id).read()).shape[0] == 5 and done.seconds == "1.25"


def test_running_job_reports_progress_and_delete_really_stops_it(client):
    video = slow_job(client)
    deadline = time.monotonic() + 60
    while (current := client.videos.retrieve(video.id)).progress < 1:
        assert time.monotonic() < deadline and current.status in ("queued", "in_progress")
        time.sleep(0.05)
    assert current.status == "in_progress"
    cancelled = client.videos.delete(video.id)
    assert cancelled.deleted is False and cancelled.model_extra["cancelled"] is True
    stopped = wait_for(client, video.id, timeout=30)
    assert stopped.status == "failed" and stopped.error.code == "cancelled" and stopped.progress < 100
    assert "denoising steps" in stopped.error.message
    quick = client.videos.create(prompt="next", size="32x32", extra_body={"num_frames": 5})
    assert wait_for(client, quick.id).status == "completed"  # the engine is free again


def test_queued_job_is_cancelled_before_it_runs(client):
    running, queued = slow_job(client), slow_job(client)
    client.videos.delete(queued.id)
    assert client.videos.retrieve(queued.id).error.message == "cancelled before it started"
    client.videos.delete(running.id)
    assert wait_for(client, running.id).error.code == "cancelled"


def test_list_pages_newest_first_and_delete_removes_a_finished_job(server, client):
    ids = [client.videos.create(prompt=f"v{i}", size="32x32", extra_body={"num_frames": 5}).id for i in range(3)]
    for video_id in ids:
        wait_for(client, video_id)
    page = requests.get(server.v1 + "/videos", params={"limit": 2}, timeout=10).json()
    assert [v["id"] for v in page["data"]] == ids[::-1][:2] and page["has_more"]
    rest = requests.get(server.v1 + "/videos", params={"limit": 1, "after": page["last_id"]}, timeout=10).json()
    assert rest["data"][0]["id"] == ids[0]
    assert client.videos.delete(ids[0]).deleted is True
    assert not list(server.output_path.joinpath("videos").glob(f"{ids[0]}*"))
    for path in (f"/videos/{ids[0]}", f"/videos/{ids[0]}/content"):
        assert requests.get(server.v1 + path, timeout=10).status_code == 404


def test_bad_video_requests(server):
    def post(body):
        return requests.post(server.v1 + "/videos", json=body, timeout=10)

    assert post({"size": "32x32"}).json()["error"]["param"] == "prompt"
    assert post({"prompt": "x", "seconds": -1}).status_code == 400
    assert post({"prompt": "x", "num_frames": 100000}).status_code == 400
    refused = post({"prompt": "x", "input_reference": {"image_url": "data:image/png;base64,AAAA"}})
    assert refused.status_code == 422 and "no input image" in refused.json()["error"]["message"]
    # a text-to-video model makes an image as its one-frame video; it edits none
    image = requests.post(server.v1 + "/images/generations", json={"prompt": "x", "size": "32x48"}, timeout=120)
    assert image.status_code == 200, image.text
    assert Image.open(io.BytesIO(base64.b64decode(image.json()["data"][0]["b64_json"]))).size == (32, 48)
    edit = requests.post(server.v1 + "/images/edits", files={"image": ("a.png", b"x")}, data={"prompt": "x"},
                         timeout=10)
    assert edit.status_code == 422 and "no input image" in edit.json()["error"]["message"]
    doc = requests.get(server.url + "/openapi.json", timeout=10).json()["paths"]
    assert "/v1/images/generations" in doc and "/v1/images/edits" not in doc
    not_ready = requests.get(server.v1 + "/videos/video_" + "0" * 32, timeout=10)
    assert not_ready.status_code == 404


@pytest.mark.slow
def test_image_to_video_with_uploaded_input_reference(tiny_model, tmp_path):
    server = start_server(tiny_model("wan2.1-i2v"), tmp_path / "out", "--num-inference-steps", 1)
    try:
        client = openai.OpenAI(api_key="unused", base_url=server.v1, max_retries=0)
        png = io.BytesIO()
        Image.new("RGB", (32, 32), (200, 30, 30)).save(png, format="PNG")
        video = client.videos.create(prompt="it moves", size="32x32", input_reference=("first.png", png.getvalue()),
                                     extra_body={"num_frames": 5})
        done = wait_for(client, video.id)
        assert done.status == "completed", done.error
        assert frames_of(client.videos.download_content(video.id).read()).shape == (5, 32, 32, 3)
        data_url = "data:image/png;base64," + base64.b64encode(png.getvalue()).decode()
        as_json = requests.post(server.v1 + "/videos", json={"prompt": "x", "size": "32x32", "num_frames": 5,
                                                             "input_reference": {"image_url": data_url}}, timeout=30)
        assert wait_for(client, as_json.json()["id"]).status == "completed"
        missing = requests.post(server.v1 + "/videos", json={"prompt": "x"}, timeout=10)
        assert missing.status_code == 422 and missing.json()["error"]["param"] == "input_reference"
        assert not list((server.output_path / "uploads").iterdir())  # inputs are removed after use
    finally:
        server.stop()


@pytest.mark.slow
def test_jobs_survive_a_crash_and_a_drain(tiny_model, tmp_path):
    model, out = tiny_model("wan2.1-t2v"), tmp_path / "out"
    server = start_server(model, out, "--num-inference-steps", 2)
    client = openai.OpenAI(api_key="unused", base_url=server.v1, max_retries=0)
    finished = client.videos.create(prompt="kept", size="32x32", extra_body={"num_frames": 5})
    wait_for(client, finished.id)
    running, queued = slow_job(client), slow_job(client)
    wait_for(client, running.id, until=("in_progress",))
    server.stop(signal.SIGKILL)  # a crash: nothing gets to update the jobs

    server = start_server(model, out, "--num-inference-steps", 2)
    client = openai.OpenAI(api_key="unused", base_url=server.v1, max_retries=0)
    assert client.videos.retrieve(finished.id).status == "completed"
    assert frames_of(client.videos.download_content(finished.id).read()).shape == (5, 32, 32, 3)
    for cut_off in (client.videos.retrieve(running.id), client.videos.retrieve(queued.id)):
        assert cut_off.status == "failed" and cut_off.error.code == "interrupted"
        assert "server stopped before this job finished" in cut_off.error.message
    assert {v.id for v in client.videos.list().data} == {finished.id, running.id, queued.id}

    drained = client.videos.create(prompt="drained", size="32x32", extra_body={"num_frames": 5,
                                                                               "num_inference_steps": 40})
    never_started = slow_job(client)
    wait_for(client, drained.id, until=("in_progress",))
    assert server.stop(signal.SIGTERM) == -signal.SIGTERM  # drains: the running job finishes, the queued one not
    jobs = JobStore(out / "jobs.sqlite3")
    assert jobs.get(drained.id).status == "completed" and (out / "videos" / f"{drained.id}.mp4").is_file()
    interrupted = jobs.get(never_started.id)
    assert (interrupted.status, interrupted.error_code) == ("failed", "interrupted")
    assert "shut down before the job started" in interrupted.error_message
