"""The prepared GPU check (benchmarks/gpu/check.py) in its CPU dry run, so that it cannot rot
before a card runs it: every section through its own process, tiny shapes, one JSON."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CHECK = REPO / "benchmarks" / "gpu" / "check.py"
# The e2e section is one function for every family: Wan's run covers FLUX.1's and Qwen-Image's.
SECTIONS = "environment,gpu_tests,kernels,e2e:wan2.1-t2v"


def _run(tmp_path, *args, timeout=600):
    proc = subprocess.run([sys.executable, str(CHECK), "--dry-run", "--out", str(tmp_path), *args],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)
    records = sorted(tmp_path.glob("gpu_check-*.json"))
    assert len(records) == 1, proc.stdout + proc.stderr
    return proc, json.loads(records[0].read_text())


@pytest.mark.slow
def test_dry_run_runs_every_section_and_writes_one_record(tmp_path):
    proc, rec = _run(tmp_path, "--sections", SECTIONS)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert rec["dry_run"] and rec["failures"] == []
    assert {name: s["status"] for name, s in rec["sections"].items()} == dict.fromkeys(SECTIONS.split(","), "ok")
    sections = {name: s["result"] for name, s in rec["sections"].items()}

    assert sections["environment"]["native"]["available"] is not None
    tests = sections["gpu_tests"]
    assert "tests/ops/test_gpu.py" in tests["files"] and tests["tests"] > 0
    assert tests["skipped"] == tests["tests"]  # no CUDA here: every gpu test skips, none fails

    kernels = sections["kernels"]
    assert kernels["errors_list"] == [] and kernels["copy_gbs"] > 0
    assert {"norm_modulate", "rope", "qk_norm", "gelu_tanh", "all_to_all_layout"} < set(kernels["ops"])
    attention = [op for op in kernels["ops"] if op.startswith("attention_s")]
    assert attention and all(kernels["ops"][op]["results"]["sdpa"]["gflops"] > 0 for op in attention)
    assert all(r["median_ms"] > 0 for op in kernels["ops"].values() for r in op["results"].values())

    e2e = sections["e2e:wan2.1-t2v"]
    for backend, name in (("native", "sglang"), ("diffusers", "diffusers")):
        run = e2e[backend]
        assert run["pipeline"]["backend"] == name
        assert len(run["step_s"]) == e2e["request"]["steps"] - 1 and run["step_median_s"] > 0
    assert e2e["native"]["frames"] == e2e["diffusers"]["frames"]
    assert e2e["speedup_per_step"] > 0

    assert (tmp_path / rec["log"]).is_file()
    assert "failures: 0" in proc.stdout


def test_sections_without_time_left_are_recorded_as_skipped(tmp_path):
    proc, rec = _run(tmp_path, "--budget-s", "1", timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert rec["sections"] and all(s["status"] == "skipped" for s in rec["sections"].values())
    assert all("time budget" in s["error"] for s in rec["sections"].values())


def test_unknown_section_is_refused_with_the_valid_names(tmp_path):
    proc = subprocess.run([sys.executable, str(CHECK), "--dry-run", "--sections", "kernels,bogus"],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 2 and "bogus" in proc.stderr and "e2e:wan2.1-t2v" in proc.stderr
