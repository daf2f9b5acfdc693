"""`sglang serve` with no --model-path serves the demo model, as `sglang generate` does, and the
README's curl lines (image, video, status polling, download) work on it as written, with real
curl; its log is in one format, with the request defaults up front and no status polls."""

import base64
import io
import json
import re
import subprocess
import time
from pathlib import Path

import imageio.v3 as iio
import pytest
from PIL import Image

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parents[2] / "README.md"
LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR) [\w.]+: ")


def readme_curl(pattern: str) -> str:
    """The one curl line of the README's server block that `pattern` finds (continuations joined)."""
    block = next(b for b in re.findall(r"```bash\n(.*?)```", README.read_text(), re.S) if "/v1/videos -H" in b)
    lines = [line for line in block.replace("\\\n", " ").splitlines() if re.search(pattern, line)]
    assert len(lines) == 1, (pattern, lines)
    return lines[0]


def curl(line: str, server, cwd: Path, **ids) -> str:
    line = line.replace("localhost:30010", server.url.removeprefix("http://"))
    for placeholder, value in ids.items():
        line = line.replace(f"{placeholder}_<id>", value)
    proc = subprocess.run(["bash", "-c", line], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, (line, proc.stderr)
    return proc.stdout


def test_serve_without_model_path_answers_the_readme_curl_lines(serve, tmp_path):
    server = serve(None, tmp_path / "out", env={"OMP_NUM_THREADS": "2"})

    info = json.loads(curl(readme_curl("/model_info$"), server, tmp_path))
    assert info["pipeline"] == "WanPipeline" and info["dit_precision"] == info["vae_precision"] == "fp32", info

    answer = json.loads(curl(readme_curl("/v1/images/generations"), server, tmp_path))
    image = Image.open(io.BytesIO(base64.b64decode(answer["data"][0]["b64_json"])))
    assert image.format == "PNG" and min(image.size) >= 32

    job = json.loads(curl(readme_curl("/v1/videos -H"), server, tmp_path))
    poll = readme_curl(r"^curl -s localhost:30010/v1/videos/video_<id>$")
    deadline = time.monotonic() + 120
    while (status := json.loads(curl(poll, server, tmp_path, video=job["id"])))["status"] != "completed":
        assert status["status"] in ("queued", "in_progress") and time.monotonic() < deadline, status
        time.sleep(0.5)
    curl(readme_curl("/content -L -o video.mp4"), server, tmp_path, video=job["id"])
    frames = iio.imread(tmp_path / "video.mp4", plugin="pyav")  # [F, H, W, 3]
    assert frames.ndim == 4 and frames.shape[0] > 1

    # a request that leaves the length out gets the demo's 17 frames, as `sglang generate` does
    body = json.dumps({"prompt": "a red circle moving right on a blue background"})
    job = json.loads(curl(f"curl -s localhost:30010/v1/videos -H 'Content-Type: application/json' -d '{body}'",
                          server, tmp_path))
    assert job["seconds"] == "2.125", job
    deadline = time.monotonic() + 120
    while (status := json.loads(curl(poll, server, tmp_path, video=job["id"])))["status"] != "completed":
        assert status["status"] in ("queued", "in_progress") and time.monotonic() < deadline, status
        time.sleep(0.5)
    curl(readme_curl("/content -L -o video.mp4"), server, tmp_path, video=job["id"])
    assert iio.imread(tmp_path / "video.mp4", plugin="pyav").shape[0] == 17

    log = server.log()
    assert "no --model-path given" in log and "defaults of every request: WanPipeline" in log
    assert re.search(r"generating: .*, \d+ steps, guidance", log)
    uvicorn_lines = [line for line in log.splitlines() if "vicorn" in line]
    assert uvicorn_lines and all(LOG_LINE.match(line) for line in uvicorn_lines), uvicorn_lines
    assert '"POST /v1/videos HTTP/1.1" 200' in log
    assert f'"GET /v1/videos/{job["id"]} HTTP' not in log and "GET /health" not in log  # polls left out
