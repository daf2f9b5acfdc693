"""What the kernel benchmarks share: options, seeded inputs, interleaved timing, bandwidth and
speed-up figures, the run's record, the JSON file.

Each benchmark module has ``measure(...)``, which returns the record's fields (shapes, results,
ratios) for explicit sizes, and a ``main()`` that parses the command line, records, writes and
prints; benchmarks/gpu/check.py calls the same ``measure`` functions on a card.

Timing: every provider is warmed up, then the providers take turns within each repetition,
so a change in the machine's load hits them alike; wall time per call on the CPU, CUDA events
on a GPU (after a synchronize). Reported per provider: median, p20, p80 (ms).

``clock="thread"`` times the calling thread's CPU time instead (time.thread_time), for
single-threaded runs on a machine shared with other work: it counts the cycles a kernel
needs, not the time it waited for a core.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

from machine import machine_info  # noqa: E402


def argument_parser(description: str, warmup: int = 3, reps: int = 30) -> argparse.ArgumentParser:
    """The options every kernel benchmark takes (dtype, device, warm-up and timed repetitions,
    output folder); each benchmark adds its shapes."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--warmup", type=int, default=warmup)
    parser.add_argument("--reps", type=int, default=reps)
    parser.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results")
    return parser


def add_head_shape(parser: argparse.ArgumentParser, seq_len: int, batch: int = 1) -> None:
    """--batch, --seq-len, --heads, --head-dim of [B, S, H, D] inputs; the head defaults are
    Wan2.1-1.3B's self-attention (12 heads x 128, width 1536)."""
    parser.add_argument("--batch", type=int, default=batch)
    parser.add_argument("--seq-len", type=int, default=seq_len)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--head-dim", type=int, default=128)


def randn(device: torch.device, dtype: torch.dtype, *shapes) -> list[torch.Tensor]:
    """A standard-normal tensor per shape, drawn in turn from one generator seeded 0."""
    gen = torch.Generator(device=device).manual_seed(0)
    return [torch.randn(shape, generator=gen, device=device).to(dtype) for shape in shapes]


def time_providers(fns: dict, warmup: int, reps: int, device: torch.device, clock: str = "wall") -> dict:
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples = {name: [] for name in fns}
    cuda = device.type == "cuda"
    for _ in range(reps):
        for name, fn in fns.items():
            if cuda:
                torch.cuda.synchronize(device)
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                samples[name].append(start.elapsed_time(end))
            else:
                now = time.thread_time if clock == "thread" else time.perf_counter
                t0 = now()
                fn()
                samples[name].append((now() - t0) * 1e3)
    results = {}
    for name, ms in samples.items():
        # deciles, q[1] p20 and q[7] p80; "inclusive" keeps them within the samples when reps are few
        q = statistics.quantiles(ms, n=10, method="inclusive") if len(ms) > 1 else [ms[0]] * 9
        results[name] = {"median_ms": statistics.median(ms), "p20_ms": q[1], "p80_ms": q[7], "reps": reps}
    return results


def copy_bandwidth_gbs(nbytes: int, device: torch.device, reps: int = 10) -> float:
    """This machine's copy bandwidth (read + write) on a buffer of ``nbytes``: the ceiling of
    the memory-bound ops."""
    src = torch.randn(max(1, nbytes // 4), device=device)
    dst = torch.empty_like(src)
    ms = time_providers({"copy": lambda: dst.copy_(src)}, 3, reps, device)["copy"]["median_ms"]
    return 2 * src.numel() * 4 / ms / 1e6


def speedups(results: dict, baseline: str) -> dict:
    """Each other provider's speed-up over ``baseline`` (ratio of medians)."""
    base = results[baseline]["median_ms"]
    return {name: base / r["median_ms"] for name, r in results.items() if name != baseline}


def time_memory_bound(fns: dict, nbytes: int, device: torch.device, warmup: int, reps: int) -> dict:
    """Times a memory-bound op's providers (the first is the baseline, "eager") and returns the
    record's fields: the bytes each call reads and writes, this machine's copy bandwidth over
    the same traffic (the ceiling), the results with each provider's GB/s, the speed-ups."""
    with torch.inference_mode():
        results = time_providers(fns, warmup, reps, device)
    for r in results.values():
        r["gbs"] = nbytes / r["median_ms"] / 1e6
    baseline = next(iter(fns))
    return {
        "bytes_moved": nbytes,
        "copy_gbs": copy_bandwidth_gbs(nbytes // 2, device),
        "results": results,
        f"speedup_vs_{baseline}": speedups(results, baseline),
    }


def gbs_column(name: str, r: dict) -> str:
    return f"{r['gbs']:.1f} GB/s"


def matmul_gflops(device: torch.device, dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    """This machine's matmul rate at n x n x n: the ceiling of attention's FLOP rate."""
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    ms = time_providers({"mm": lambda: a @ b}, 2, reps, device)["mm"]["median_ms"]
    return 2 * n**3 / ms / 1e6


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def record(benchmark: str, device: torch.device, **fields) -> dict:
    info = machine_info()
    info["torch_threads"] = torch.get_num_threads()
    info["load_avg_1m"] = os.getloadavg()[0]  # other work on the machine skews the timings
    from sglang_diffusion.ops import _native

    info["cpu_isa"] = _native.native_library().cpu_isa
    info["card"] = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {"benchmark": benchmark, "device": str(device), "machine": info, **fields}


def write(rec: dict, name: str, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    where = "cpu" if rec["device"] == "cpu" else rec["machine"]["card"].replace(" ", "_")
    path = out_dir / f"{name}-{where}-{stamp}.json"
    path.write_text(json.dumps(rec, indent=2) + "\n")
    return path


def shown(path: Path) -> Path:
    """`path` as a benchmark prints it: relative to the repository when inside it (--out-dir may
    point anywhere)."""
    path = path.resolve()
    return path.relative_to(REPO) if path.is_relative_to(REPO) else path


def publish(rec: dict, name: str, out_dir: Path, headline: str, baseline: str = "eager", extra=gbs_column) -> Path:
    """Writes ``rec`` (from ``record``) as JSON, then prints the headline, its results table
    against ``baseline`` and where the file went."""
    path = write(rec, name, out_dir)
    print(headline + (f"; copy bandwidth {rec['copy_gbs']:.1f} GB/s" if "copy_gbs" in rec else ""))
    print_results(rec["results"], baseline, extra)
    print(f"wrote {shown(path)}")
    return path


def print_results(results: dict, baseline: str, extra=None) -> None:
    base = results[baseline]["median_ms"]
    for name, r in results.items():
        ratio = "" if name == baseline else f"  {base / r['median_ms']:.2f}x {baseline}"
        more = f"  {extra(name, r)}" if extra else ""
        print(f"{name:>12}: {r['median_ms']:9.3f} ms (p20 {r['p20_ms']:.3f}, p80 {r['p80_ms']:.3f}){ratio}{more}")
