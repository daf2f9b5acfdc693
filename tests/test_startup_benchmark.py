"""benchmarks/startup.py runs end to end (one run, no warm-up: its figures mean nothing here)
and writes its JSON."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def test_startup_benchmark_writes_whole_process_times_and_the_import_breakdown(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "startup.py"), "--runs", "1", "--warmup", "0",
                           "--output-dir", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = tmp_path.glob("startup-cpu-*.json")
    result = json.loads(path.read_text())
    assert result["help_s"]["median"] > 0 and result["demo_s"]["median"] > result["demo_work_s"]["median"] > 0
    assert "denoising" in result["demo_stages_s"][0] and result["machine"]["cpu"]
    imports = result["demo_imports"]
    assert imports["total_s"] > 0 and "torch" in imports["by_package_s"]
    assert "demo generation: median" in proc.stdout
