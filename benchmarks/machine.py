"""What a benchmark result names about where it ran: machine, card, versions, commit."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """What the CPU reports (/proc/cpuinfo "flags": avx2, avx512*, amx_* ...), sorted."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return sorted(line.split(":", 1)[1].split())
    except OSError:
        pass
    return []


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip()


def machine_info() -> dict:
    import torch

    import sglang_diffusion

    from sglang_diffusion.ops import _native

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "host": platform.node(), "cpu": cpu_model(), "cpu_count": os.cpu_count(), "cpu_flags": cpu_flags(),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "kernels_cpu_isa": _native.native_library().cpu_isa, "gpu": gpu,
            "python": platform.python_version(), "torch": torch.__version__,
            "sglang_diffusion": sglang_diffusion.__version__, "commit": git_commit()}
