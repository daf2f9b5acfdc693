"""--perf-dump-path (per-stage and per-step timings as JSON) and --profile (a torch profiler trace of
num_profiled_timesteps denoising steps) through the Engine, on a native and a diffusers pipeline."""

from __future__ import annotations

import json

import pytest

from sglang_diffusion.config.sampling_params import SamplingParams
from sglang_diffusion.config.server_args import ServerArgs
from sglang_diffusion.runtime.engine import Engine

REQUEST = dict(prompt="a lighthouse", negative_prompt="fog", height=32, width=32, num_frames=5,
               num_inference_steps=4, guidance_scale=4.0, seed=2, save_output=False)


@pytest.fixture(scope="module")
def wan(tiny_model):
    with Engine(ServerArgs(model_path=str(tiny_model("wan2.1-t2v")))) as engine:
        yield engine


def test_perf_dump_has_every_stage_and_every_denoising_step(wan, tmp_path):
    folder = tmp_path / "perf"
    folder.mkdir()
    for _ in range(2):  # a directory: one file per request, none replaced
        wan.generate(SamplingParams(**REQUEST, perf_dump_path=str(folder), output_path=str(tmp_path)))
    dumps = sorted(folder.glob("*.perf.json"))
    assert [d.name for d in dumps] == ["a_lighthouse_2-1.perf.json", "a_lighthouse_2.perf.json"]
    dump = json.loads(dumps[1].read_text())
    assert dump["backend"] == "sglang" and dump["request"]["num_inference_steps"] == 4
    assert {"text_encoding", "denoising", "decoding"} <= set(dump["stages_s"])
    steps = dump["steps_s"]
    assert len(steps) == 4 and all(s > 0 for s in steps)
    assert sum(steps) <= dump["stages_s"]["denoising"] <= dump["total_s"]
    assert dump["step_mean_s"] == pytest.approx(sum(steps) / 4)


def test_profile_traces_the_steps_after_the_first(wan, tmp_path, caplog):
    path = tmp_path / "perf.json"
    with caplog.at_level("INFO"):
        wan.generate(SamplingParams(**REQUEST, profile=True, num_profiled_timesteps=2, output_path=str(tmp_path),
                                    perf_dump_path=str(path)))
    assert "denoising steps 2, 3 traced in" in caplog.text
    trace = tmp_path / "a_lighthouse_2.trace.json"
    assert json.loads(path.read_text())["trace"] == str(trace)
    events = json.loads(trace.read_text())["traceEvents"]
    assert any(e.get("name", "").startswith("aten::") for e in events)


@pytest.mark.slow
def test_perf_dump_on_the_diffusers_backend_counts_its_steps(tiny_model, tmp_path):
    path = tmp_path / "d" / "perf.json"
    with Engine(ServerArgs(model_path=str(tiny_model("wan2.1-t2v")), backend="diffusers")) as engine:
        engine.generate(SamplingParams(**dict(REQUEST, num_inference_steps=3), perf_dump_path=str(path)))
    dump = json.loads(path.read_text())
    assert dump["backend"] == "diffusers" and len(dump["steps_s"]) == 3
    assert "denoising" in dump["stages_s"]
