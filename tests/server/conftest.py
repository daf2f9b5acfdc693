"""A real `sglang serve` in a subprocess on a free loopback port, and the tiny inputs the server
tests share (a tiny LoRA, an image-to-image copy of the tiny Flux model)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sglang_diffusion.distributed.launch import free_port

API_KEY = "sk-test-key"
FLUX_QUEUE = 2
START_TIMEOUT_S = 180


@dataclass
class ServerProcess:
    proc: subprocess.Popen
    url: str
    output_path: Path
    log_path: Path

    @property
    def v1(self) -> str:
        return self.url + "/v1"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig=signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"the server did not stop within {timeout} s:\n{self.log()[-4000:]}") from None


def start_server(model: Path | None, output_path: Path, *args, env: dict | None = None) -> ServerProcess:
    """`sglang serve` with the model (None: no --model-path, the demo model), waiting until
    /health answers (the model is loaded by then)."""
    port = free_port()
    output_path.mkdir(parents=True, exist_ok=True)
    log_path = output_path.parent / f"server-{port}.log"
    cmd = [sys.executable, "-m", "sglang_diffusion", "serve", *(["--model-path", str(model)] if model else []),
           "--host", "127.0.0.1", "--port", str(port), "--output-path", str(output_path), *map(str, args)]
    with open(log_path, "w") as log:
        # One intra-op thread: tiny models gain nothing from more, and on a small shared machine two
        # spinning torch thread pools (server and test process) made generations 5-15x slower.
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **(env or {})})
    server = ServerProcess(proc, f"http://127.0.0.1:{port}", output_path, log_path)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited with {proc.returncode}:\n{server.log()[-4000:]}")
        try:
            if requests.get(server.url + "/health", timeout=2).status_code == 200:
                return server
        except requests.ConnectionError:
            pass
        time.sleep(0.3)
    server.stop(signal.SIGKILL)
    raise AssertionError(f"the server did not answer /health within {START_TIMEOUT_S} s:\n{server.log()[-4000:]}")


@pytest.fixture(scope="session")
def flux_server(tiny_model, tmp_path_factory):
    """The tiny Flux model (diffusers backend, for LoRA) behind an API key, with small default sizes
    and tight limits (so that a fuzzer's requests stay cheap) and LoRA loading confined to an empty
    folder; shared by the image, LoRA and OpenAPI tests.
    It must drain and stop cleanly at the end."""
    root = tmp_path_factory.mktemp("flux-server")
    (root / "loras").mkdir()
    server = start_server(tiny_model("flux.1"), root / "out", "--backend", "diffusers", "--api-key", API_KEY,
                          "--num-inference-steps", 1, "--width", 32, "--height", 32, "--max-prompt-chars", 256,
                          "--max-queue-size", FLUX_QUEUE, "--max-upload-mb", 1, "--max-resolution", 64,
                          "--max-inference-steps", 8, "--lora-dirs", root / "loras")
    yield server
    # uvicorn re-raises the signal once it has shut down: "killed by SIGTERM" after a clean drain
    assert server.stop() == -signal.SIGTERM, server.log()[-3000:]
    assert "server stopped" in server.log() and "Traceback" not in server.log()


@pytest.fixture
def serve():
    """serve(model, output_path, *flags) -> a started ServerProcess, stopped after the test."""
    started = []

    def _serve(*args, **kwargs) -> ServerProcess:
        started.append(start_server(*args, **kwargs))
        return started[-1]

    yield _serve
    for server in started:
        server.stop(signal.SIGKILL)


def write_tiny_lora(model: Path, path: Path, seed: int, rank: int = 2) -> Path:
    """A LoRA for the tiny model's transformer in diffusers/peft key format: random A and B for
    the attention projections, large enough to visibly change the output."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    with safe_open(model / "transformer" / "diffusion_pytorch_model.safetensors", "pt") as f:
        for key in f.keys():
            if key.endswith((".to_q.weight", ".to_k.weight", ".to_v.weight")):
                out_features, in_features = f.get_slice(key).get_shape()
                module = key.removesuffix(".weight")
                state[f"transformer.{module}.lora_A.weight"] = torch.randn(rank, in_features, generator=generator)
                state[f"transformer.{module}.lora_B.weight"] = torch.randn(out_features, rank, generator=generator)
    assert state, "no attention projections found in the tiny transformer"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, path)
    return path


def image_to_image_copy(model: Path, target: Path) -> Path:
    """The tiny Flux folder served as FluxImg2ImgPipeline (same components, takes an input image)."""
    if not target.exists():
        shutil.copytree(model, target)
        index = json.loads((target / "model_index.json").read_text())
        index["_class_name"] = "FluxImg2ImgPipeline"
        (target / "model_index.json").write_text(json.dumps(index))
    return target
