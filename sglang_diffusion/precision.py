"""Which reduced precisions pay on this CPU, by measurement rather than by assumption.

A CPU with AMX or AVX-512-BF16 runs a bf16 matmul faster than an fp32 one (oneDNN uses those
units); an AVX2-only CPU emulates it at a small fraction of fp32's rate. So on first use on a
CPU, ``cpu_rates`` times a representative matmul and attention (torch SDPA) in fp32, bf16 and,
where the CPU has AVX-512-FP16, fp16, on one thread by its CPU time (robust to a shared
machine's load), and caches the GFLOP/s beside the attention choice
(``<cache dir>/precision_rates.json``, keyed by the CPU, its threads and the versions).

A precision's speedup is the slower of its two ratios to fp32 (a DiT needs both kernels):

- ``choose``: a requested bf16/fp16 runs as asked where its speedup is at least ``FAST`` (not
  slower than fp32), else in fp32; the reason gives the measured rates either way.
- ``default_choice``: the DiT's (and text encoders') default is bf16 where it is clearly faster
  (speedup at least ``CLEARLY_FASTER``), else fp32.
- ``forced_default``: ``SGLD_CPU_PRECISION=fp32|bf16`` sets that default instead, without
  measuring (a deployment that wants the same numbers on every CPU; the test suite, whose
  comparisons with diffusers are exact in fp32 only).

Accuracy is the kernels' business: every op is tested against its fp32 reference in bf16.
"""

from __future__ import annotations

import functools
import logging
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from sglang_diffusion import tuning_cache
from sglang_diffusion.errors import ConfigError

logger = logging.getLogger(__name__)

CACHE_FILE = "precision_rates.json"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
FORCE_ENV = "SGLD_CPU_PRECISION"
FAST = 1.0
CLEARLY_FASTER = 1.25
MATMUL_N = 256  # [N, N] @ [N, N]: 34 MFLOP, under a ms in fp32
ATTENTION_SHAPE = (1, 4, 256, 64)  # [B, H, S, D]: 67 MFLOP
MIN_SECONDS = 0.02  # per sample, after one warm-up call
ROUNDS = 3  # samples per kernel and precision, the precisions alternating; the median counts


@dataclass(frozen=True)
class Rates:
    """GFLOP/s on one thread per kernel ("matmul", "attention") and precision ("fp32", "bf16",
    "fp16")."""

    gflops: dict[str, dict[str, float]]

    def speedup(self, precision: str) -> Optional[float]:
        """The slower of the kernels' rates in ``precision`` against fp32; None if not measured."""
        ratios = [r[precision] / r["fp32"] for r in self.gflops.values() if precision in r and r["fp32"] > 0]
        return min(ratios) if ratios else None

    def summary(self, precision: str) -> str:
        if self.speedup(precision) is None:
            return f"{precision} not measured (no AVX-512-FP16 on this CPU)"
        kernels = ", ".join(f"{kernel} {r[precision]:.1f} vs {r['fp32']:.1f}" for kernel, r in self.gflops.items())
        return f"measured {precision} at {self.speedup(precision):.2f}x fp32: {kernels} GFLOP/s per thread"


def _gflops(fns: dict[str, Callable[[], object]], flops: float) -> dict[str, float]:
    """GFLOP/s of each fn on one thread, by that thread's CPU time (the cycles a kernel needs,
    not the time it waited for a core on a shared machine): the median of ROUNDS samples taken
    in turns (A B A B)."""
    reps = {}
    for name, fn in fns.items():
        fn()  # warm-up: first-call costs (allocation, oneDNN primitive creation)
        start = time.thread_time()
        fn()
        reps[name] = max(1, min(50, int(MIN_SECONDS / max(time.thread_time() - start, 1e-6))))
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(ROUNDS):
        for name, fn in fns.items():
            start = time.thread_time()
            for _ in range(reps[name]):
                fn()
            samples[name].append(flops * reps[name] / max(time.thread_time() - start, 1e-6) / 1e9)
    return {name: round(statistics.median(s), 2) for name, s in samples.items()}


def _has_avx512_fp16() -> bool:
    try:
        return "avx512_fp16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def measure_rates() -> Rates:
    """Times the two kernels in each precision on this CPU (about a second on an AVX2 CPU,
    where bf16 is slow)."""
    precisions = ["fp32", "bf16"] + (["fp16"] if _has_avx512_fp16() else [])
    gen = torch.Generator().manual_seed(0)
    n = MATMUL_N
    a32, b32 = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)
    q32, k32, v32 = (torch.randn(ATTENTION_SHAPE, generator=gen) for _ in range(3))
    b, h, s, d = ATTENTION_SHAPE
    mm = {p: (a32.to(DTYPES[p]), b32.to(DTYPES[p])) for p in precisions}
    qkv = {p: [t.to(DTYPES[p]) for t in (q32, k32, v32)] for p in precisions}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            matmul = _gflops({p: functools.partial(torch.matmul, *mm[p]) for p in precisions}, 2 * n**3)
            attention = _gflops({p: functools.partial(F.scaled_dot_product_attention, *qkv[p]) for p in precisions},
                                4 * b * h * s * s * d)
    finally:
        torch.set_num_threads(threads)
    return Rates({"matmul": matmul, "attention": attention})


@functools.cache
def _cached_rates(cache_dir: str) -> Rates:
    path = Path(cache_dir) / CACHE_FILE
    key = tuning_cache.versions_key(torch.device("cpu"))
    entry = tuning_cache.read(path).get(key)
    if isinstance(entry, dict) and "fp32" in entry.get("matmul", {}) and "bf16" in entry.get("matmul", {}):
        rates = Rates(entry)
        logger.info("CPU precision rates: cached in %s (%s)", path, rates.summary("bf16"))
        return rates
    rates = measure_rates()
    tuning_cache.write(path, key, rates.gflops, "CPU precision rates")
    logger.info("CPU precision rates: measured, cached in %s (%s)", path, rates.summary("bf16"))
    return rates


def cpu_rates(cache_dir: Path | str | None = None) -> Rates:
    """This CPU's rates, measured on first use and cached on disk (and in the process)."""
    return _cached_rates(str(cache_dir if cache_dir is not None else tuning_cache.DEFAULT_CACHE_DIR))


def choose(requested: str, rates: Rates) -> tuple[str, str]:
    """(the precision to run, why) for a requested "fp32", "bf16" or "fp16" on this CPU."""
    if requested == "fp32":
        return "fp32", "requested"
    speedup = rates.speedup(requested)
    if speedup is not None and speedup >= FAST:
        return requested, f"requested; {rates.summary(requested)}"
    return "fp32", f"{requested} is slower than fp32 here, {rates.summary(requested)}"


def default_choice(rates: Rates) -> tuple[str, str]:
    """(the default DiT precision on this CPU, why): bf16 where clearly faster, else fp32."""
    speedup = rates.speedup("bf16")
    if speedup is not None and speedup >= CLEARLY_FASTER:
        return "bf16", f"bf16 is clearly faster than fp32 here, {rates.summary('bf16')}"
    return "fp32", f"bf16 is not {CLEARLY_FASTER}x fp32 here, {rates.summary('bf16')}"


def forced_default() -> Optional[str]:
    """The CPU default precision ``SGLD_CPU_PRECISION`` names ("fp32" or "bf16"), None when unset."""
    value = os.environ.get(FORCE_ENV, "").strip().lower()
    if not value:
        return None
    if value not in ("fp32", "bf16"):
        raise ConfigError(f"{FORCE_ENV}={value!r}: the CPU default precision is fp32 or bf16 (unset: measured)")
    return value
