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


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip()


def machine_info() -> dict:
    import torch

    import sglang_diffusion

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "host": platform.node(), "cpu": cpu_model(), "cpu_count": os.cpu_count(), "gpu": gpu,
            "python": platform.python_version(), "torch": torch.__version__,
            "sglang_diffusion": sglang_diffusion.__version__, "commit": git_commit()}
