"""The guide's cloud-storage flow against a real S3-compatible server process (moto's server mode on
loopback): generate -> upload in the background -> delete the local file -> answer the object's
URL; a failed upload keeps the file and answers the local URL."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import time

import boto3
import imageio.v3 as iio
import openai
import pytest
import requests
from PIL import Image

from sglang_diffusion.config.server_args import ServerArgs
from sglang_diffusion.distributed.launch import free_port
from sglang_diffusion.errors import ConfigError
from sglang_diffusion.storage.s3 import S3Storage
from tests.server.conftest import start_server

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:The Sora API:DeprecationWarning")]
BUCKET = "outputs"
CREDENTIALS = {"SGLANG_S3_ACCESS_KEY_ID": "testing", "SGLANG_S3_SECRET_ACCESS_KEY": "testing",
               "SGLANG_S3_REGION_NAME": "us-east-1"}


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    """moto_server on a free loopback port, with the bucket made; its endpoint URL."""
    port = free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            requests.get(endpoint, timeout=5)
            break
        except (requests.ConnectionError, requests.Timeout):  # not listening yet, or its first answer is slow
            assert proc.poll() is None and time.monotonic() < deadline, "moto_server did not start"
            time.sleep(0.2)
    create_public_bucket(s3_client(endpoint))
    yield endpoint
    proc.terminate()
    proc.wait(10)
    log.close()


def s3_client(endpoint):
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                        aws_secret_access_key="testing")


def create_public_bucket(client) -> None:
    """The bucket, readable by anyone (what "answer with the object's public URL" assumes)."""
    client.create_bucket(Bucket=BUCKET)
    client.put_bucket_policy(Bucket=BUCKET, Policy=json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{BUCKET}/*"}]}))


def s3_env(endpoint) -> dict:
    return {**CREDENTIALS, "SGLANG_CLOUD_STORAGE_TYPE": "s3", "SGLANG_S3_BUCKET_NAME": BUCKET,
            "SGLANG_S3_ENDPOINT_URL": endpoint}


@pytest.fixture(scope="module")
def image_server(moto, tiny_model, tmp_path_factory):
    server = start_server(tiny_model("flux.1"), tmp_path_factory.mktemp("s3-images") / "out", "--backend", "diffusers",
                          "--num-inference-steps", 1, env=s3_env(moto))
    yield server
    server.stop()


def image_url(server) -> str:
    response = requests.post(server.v1 + "/images/generations", timeout=60,
                             json={"prompt": "a cat", "size": "32x32", "response_format": "url"})
    assert response.status_code == 200, response.text
    return response.json()["data"][0]["url"]


def test_image_is_uploaded_then_deleted_locally_and_answered_with_its_object_url(moto, image_server):
    url = image_url(image_server)
    prefix = f"{moto}/{BUCKET}/images/"
    assert url.startswith(prefix) and url.endswith(".png")
    key = url.removeprefix(f"{moto}/{BUCKET}/")
    assert s3_client(moto).head_object(Bucket=BUCKET, Key=key)["ContentType"] == "image/png"
    assert Image.open(io.BytesIO(requests.get(url, timeout=10).content)).size == (32, 32)
    assert not list((image_server.output_path / "images").iterdir())  # deleted after the upload


def test_failed_upload_keeps_the_file_and_answers_the_local_url(moto, image_server):
    client = s3_client(moto)
    for item in client.list_objects_v2(Bucket=BUCKET).get("Contents", []):
        client.delete_object(Bucket=BUCKET, Key=item["Key"])
    client.delete_bucket(Bucket=BUCKET)  # every upload now fails
    try:
        url = image_url(image_server)
    finally:
        create_public_bucket(client)
    assert url.startswith(image_server.url + "/v1/images/img_")
    (kept,) = (image_server.output_path / "images").iterdir()
    assert kept.stem in url and requests.get(url, timeout=10).content == kept.read_bytes()
    assert "upload of" in image_server.log() and "failed" in image_server.log()
    metrics = requests.get(image_server.url + "/metrics", timeout=10).text
    assert 'sglang_diffusion_uploads_total{result="failed"} 1.0' in metrics


def test_b64_json_answers_need_no_storage(image_server):
    response = requests.post(image_server.v1 + "/images/generations", json={"prompt": "x", "size": "32x32"},
                             timeout=60)
    assert Image.open(io.BytesIO(base64.b64decode(response.json()["data"][0]["b64_json"]))).size == (32, 32)


def test_video_job_is_stored_in_the_bucket_with_a_presigned_url(moto, tiny_model, tmp_path):
    server = start_server(tiny_model("wan2.1-t2v"), tmp_path / "out", "--num-inference-steps", 1,
                          "--s3-presigned-urls", env=s3_env(moto))
    try:
        client = openai.OpenAI(api_key="unused", base_url=server.v1, max_retries=0)
        video = client.videos.create(prompt="a cat", size="32x32", extra_body={"num_frames": 5})
        deadline = time.monotonic() + 120
        while (video := client.videos.retrieve(video.id)).status != "completed":
            assert video.status != "failed" and time.monotonic() < deadline, video
            time.sleep(0.1)
        url = video.model_extra["url"]
        assert url.startswith(f"{moto}/{BUCKET}/videos/{video.id}.mp4?") and "Signature" in url
        assert not list((server.output_path / "videos").iterdir())
        # /content redirects to the object, and the client follows it
        frames = iio.imread(client.videos.download_content(video.id).read(), extension=".mp4", plugin="pyav")
        assert frames.shape == (5, 32, 32, 3)
        assert client.videos.delete(video.id).deleted
        objects = s3_client(moto).list_objects_v2(Bucket=BUCKET, Prefix="videos/").get("Contents", [])
        assert not objects
    finally:
        server.stop()


def test_s3_settings_come_from_the_guides_environment_variables(monkeypatch):
    for name, value in {**CREDENTIALS, "SGLANG_CLOUD_STORAGE_TYPE": "s3", "SGLANG_S3_BUCKET_NAME": "b"}.items():
        monkeypatch.setenv(name, value)
    args = ServerArgs()
    assert (args.cloud_storage_type, args.s3_bucket_name, args.s3_region_name) == ("s3", "b", "us-east-1")
    assert args.s3_secret_access_key == "testing" and "testing" not in repr(args)
    assert S3Storage(args).url("images/a b.png") == "https://b.s3.us-east-1.amazonaws.com/images/a%20b.png"


def test_s3_without_boto3_or_bucket_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("SGLANG_S3_BUCKET_NAME", raising=False)
    with pytest.raises(ConfigError, match="needs a bucket"):
        S3Storage(ServerArgs(cloud_storage_type="s3"))
    monkeypatch.setitem(sys.modules, "boto3", None)
    with pytest.raises(ConfigError, match="needs boto3"):
        S3Storage(ServerArgs(cloud_storage_type="s3", s3_bucket_name="b"))
