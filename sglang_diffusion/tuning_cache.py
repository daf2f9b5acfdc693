"""The on-disk cache of what was measured on this machine (attention backend timings, precision
rates): one JSON file per kind under ``~/.cache/sglang_diffusion``, keyed by the device's name,
the torch and package versions, so a new machine or a new build measures again.
"""

from __future__ import annotations

import json
import logging
import os
import platform
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = Path.home() / ".cache" / "sglang_diffusion"


def device_name(device: torch.device) -> str:
    """The card's name, or the CPU's model and the threads torch uses."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} x{torch.get_num_threads()} threads"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"


def versions_key(device: torch.device) -> str:
    from sglang_diffusion import __version__

    return f"{device_name(device)}|torch {torch.__version__}|sglang-diffusion {__version__}"


def read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def write(path: Path, key: str, entry: dict, what: str) -> None:
    """Adds ``key: entry`` to the file atomically (concurrent ranks never see half a file); a
    cache that cannot be written is a warning, the measurement holds for this run."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = read(path)
        data[key] = entry
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
        tmp.replace(path)
    except OSError as exc:
        logger.warning("%s: cannot write the cache %s (%s); the measurement holds for this run", what, path, exc)
