"""Benchmark: fused norm + adaLN modulation, the _C kernel against the eager torch composition.

    python benchmarks/kernels/norm.py [--dim 1536 --seq-len 8192 --batch 1 --dtype float32]

Providers, timed in turns after warm-up (median, p20, p80 of wall time per call):
- eager:      F.layer_norm(x) * (1 + scale) + shift, what a model writes without the op
- dispatcher: sglang_diffusion.ops.norm.norm_modulate, what models call (custom op + output
              allocation + the _C kernel)
- kernel:     torch.ops.sglang_diffusion_C.norm_modulate_out into a preallocated output
Writes one JSON file to benchmarks/results/ naming the machine, versions, commit and shapes.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from sglang_diffusion.ops import _native
from sglang_diffusion.ops.norm import norm_modulate, norm_modulate_reference

REPO = Path(__file__).resolve().parents[2]


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


def time_ms(fns: dict, warmup: int, reps: int) -> dict:
    """Per provider: median, p20, p80 of wall time per call, in ms. The providers take turns
    within each repetition, so a change in the machine's load hits them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            samples[name].append((time.perf_counter() - start) * 1e3)
    results = {}
    for name, ms in samples.items():
        q = statistics.quantiles(ms, n=10)  # deciles: q[1] is p20, q[7] is p80
        results[name] = {"median_ms": statistics.median(ms), "p20_ms": q[1], "p80_ms": q[7], "reps": reps}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq-len", type=int, default=8192)
    parser.add_argument("--dim", type=int, default=1536)
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    parser.add_argument("--norm-type", choices=["layer", "rms"], default="layer")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()

    native = _native.native_library()
    if not native.available:
        sys.exit(f"sglang_diffusion._C is not built: {native.missing_reason}")

    dtype = getattr(torch, args.dtype)
    eps = 1e-6
    gen = torch.Generator().manual_seed(0)
    shape = (args.batch, args.seq_len, args.dim)
    x = torch.randn(shape, generator=gen).to(dtype)  # [B, S, D]
    scale = (0.5 * torch.randn(args.batch, 1, args.dim, generator=gen)).to(dtype)  # [B, 1, D]
    shift = torch.randn(args.batch, 1, args.dim, generator=gen).to(dtype)  # [B, 1, D]
    out = torch.empty_like(x)

    def eager():
        if args.norm_type == "layer":
            y = F.layer_norm(x, (args.dim,), eps=eps)
        else:
            y = F.rms_norm(x, (args.dim,), eps=eps)
        return y * (1 + scale) + shift

    def dispatcher():
        return norm_modulate(x, scale, shift, eps=eps, norm_type=args.norm_type)

    def kernel():
        native.ops.norm_modulate_out(out, x, scale, shift, None, None, eps, args.norm_type)
        return out

    expected = norm_modulate_reference(x, scale, shift, eps=eps, norm_type=args.norm_type).float()
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    for fn in (eager, dispatcher, kernel):
        torch.testing.assert_close(fn().float(), expected, atol=tol, rtol=tol)

    with torch.inference_mode():
        results = time_ms({"eager": eager, "dispatcher": dispatcher, "kernel": kernel}, args.warmup, args.reps)
    eager_ms = results["eager"]["median_ms"]
    record = {
        "benchmark": "norm_modulate",
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "cpu_isa": native.cpu_isa,
            "card": None,
            "load_avg_1m": os.getloadavg()[0],  # other work on the machine skews the timings
        },
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        "git_commit": git_commit(),
        "shapes": {"x": list(shape), "scale": [args.batch, 1, args.dim], "shift": [args.batch, 1, args.dim]},
        "dtype": args.dtype,
        "norm_type": args.norm_type,
        "affine": False,
        "results": results,
        "speedup_vs_eager": {name: eager_ms / r["median_ms"] for name, r in results.items() if name != "eager"},
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = args.out_dir / f"norm-cpu-{args.dtype}-{stamp}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    for name, r in results.items():
        ratio = "" if name == "eager" else f"  {eager_ms / r['median_ms']:.2f}x eager"
        print(f"{name:>10}: {r['median_ms']:8.3f} ms (p20 {r['p20_ms']:.3f}, p80 {r['p80_ms']:.3f}){ratio}")
    print(f"wrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")


if __name__ == "__main__":
    main()
