"""Where a generation's time goes against what this machine can do: the matmul ceiling.

    python benchmarks/ceiling.py [--family flux.2] [--preset small] [--height 384 --width 512]
        [--steps 2] [--guidance-scale 5]

For each backend (native and diffusers alternating, `--repeats` times, each in a fresh process:
this machine's speed drifts by tens of percent within minutes), one warm-up generation, then one
under torch.profiler (shapes and FLOPs recorded); the summary takes each figure's median. The profile's self CPU time is split into

- matmul: aten::mm / addmm / bmm / baddbmm (linear layers land here), with their FLOPs;
- attention: the scaled-dot-product kernels (aten's and ours);
- convolution: the VAE's;
- everything else (norms, RoPE, elementwise, copies);

and the wall time outside all ops (Python between them, and the profiler's own cost).

Then every matmul shape of the profile is timed on its own (random inputs, the same threads,
median of a few calls): the machine's rate on that shape. "matmul at the ceiling" is the
profile's FLOPs of each shape over that rate: the time the matmuls cannot go below here. A
backend whose matmul time is at that line and whose other parts are small is at the ceiling:
no rewrite of the same math makes it faster on this machine.

Writes benchmarks/results/ceiling-<family>-<preset>-cpu-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
PROMPT = "A cat walks on the grass, realistic style, gentle camera movement"
MATMUL_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"}
ATTENTION_WORDS = ("scaled_dot_product", "flash_attention", "sglang_diffusion::attention", "attention_out")
CONV_WORDS = ("convolution", "mkldnn_convolution", "conv2d", "conv3d")


def category(name: str) -> str:
    if name in MATMUL_OPS:
        return "matmul"
    low = name.lower()
    if any(w in low for w in ATTENTION_WORDS):
        return "attention"
    if any(w in low for w in CONV_WORDS):
        return "convolution"
    return "other"


def attention_flops(op: str, shapes: list) -> int:
    """QK^T and PV of one call: 4 B H Sq Sk D. aten's kernels take [B, H, S, D], ours [B, S, H, D]
    (0 when the shapes are not those of q, k)."""
    if len(shapes) < 2 or len(shapes[0]) != 4 or len(shapes[1]) != 4:
        return 0
    (b, x, y, d), k = shapes[0], shapes[1]
    if op.startswith("aten::"):  # [B, H, S, D]
        return 4 * b * x * y * k[2] * d
    return 4 * b * y * x * k[1] * d  # [B, S, H, D]


def profile(args) -> dict:
    """Child: one warm-up generation, one profiled; self CPU time by category, matmul shapes."""
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from sglang_diffusion.config.sampling_params import SamplingParams
    from sglang_diffusion.config.server_args import ServerArgs
    from sglang_diffusion.pipelines.registry import build_pipeline
    from sglang_diffusion.platform import Platform
    from sglang_diffusion.testing import cached_model

    model = cached_model(args.family, args.preset)
    pipe = build_pipeline(ServerArgs(model_path=str(model), backend=args.backend), Platform.current())
    request = dict(prompt=PROMPT, height=args.height, width=args.width, guidance_scale=args.guidance_scale,
                   seed=0, save_output=False, num_inference_steps=args.steps)
    pipe.generate(SamplingParams(**request))
    with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True, with_flops=True) as prof:
        wall = time.perf_counter()
        out = pipe.generate(SamplingParams(**request))
        wall = time.perf_counter() - wall
    seconds, shapes = defaultdict(float), defaultdict(lambda: [0, 0.0, 0.0])  # shape: calls, seconds, flops
    attention = []
    for event in prof.key_averages(group_by_input_shape=True):
        kind = category(event.key)
        seconds[kind] += event.self_cpu_time_total / 1e6
        # the kernel, not the op that dispatches to it (no time of its own)
        if kind == "attention" and event.self_cpu_time_total >= 0.5 * event.cpu_time_total > 0:
            attention.append({"op": event.key, "shapes": [list(s) for s in event.input_shapes[:3]],
                              "calls": event.count, "seconds": event.self_cpu_time_total / 1e6,
                              "flops": attention_flops(event.key, event.input_shapes) * event.count})
        if kind == "matmul":
            key = json.dumps([event.key, [list(s) for s in event.input_shapes[:3]]])
            entry = shapes[key]
            entry[0] += event.count
            entry[1] += event.self_cpu_time_total / 1e6
            entry[2] += event.flops or 0
    return {"backend": args.backend, "wall_s": wall, "stages_s": out.timings, "self_cpu_s": dict(seconds),
            "attention_calls": attention,
            "threads": torch.get_num_threads(),
            "matmul_shapes": [{"op": json.loads(k)[0], "shapes": json.loads(k)[1], "calls": v[0], "seconds": v[1],
                               "flops": v[2]} for k, v in shapes.items()]}


def shape_rate(op: str, shapes: list, repeats: int = 5) -> float:
    """This machine's FLOP/s on one matmul of the profile, timed alone."""
    import torch

    gen = torch.Generator().manual_seed(0)
    tensors = [torch.randn(s, generator=gen) if s else torch.zeros(()) for s in shapes]
    fn = {"aten::mm": lambda a, b: torch.mm(a, b), "aten::bmm": lambda a, b: torch.bmm(a, b),
          "aten::addmm": lambda c, a, b: torch.addmm(c, a, b),
          "aten::baddbmm": lambda c, a, b: torch.baddbmm(c, a, b)}[op]
    a, b = (tensors[-2], tensors[-1])
    flops = 2 * a.shape[-2] * a.shape[-1] * b.shape[-1] * (a.shape[0] if a.dim() == 3 else 1)
    with torch.inference_mode():
        fn(*tensors)
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn(*tensors)
            samples.append(time.perf_counter() - start)
    return flops / statistics.median(samples)


def ceiling(result: dict) -> dict:
    """The profile's matmuls at the rates their shapes run at alone."""
    at_rate = 0.0
    for entry in result["matmul_shapes"]:
        if entry["flops"] and len(entry["shapes"]) >= 2 and all(entry["shapes"][-2:]):
            entry["alone_gflops"] = shape_rate(entry["op"], entry["shapes"]) / 1e9
            entry["in_model_gflops"] = entry["flops"] / entry["seconds"] / 1e9 if entry["seconds"] else None
            at_rate += entry["flops"] / (entry["alone_gflops"] * 1e9)
        else:
            at_rate += entry["seconds"]  # no FLOP count: taken as it ran
    matmul = result["self_cpu_s"].get("matmul", 0.0)
    total = sum(result["self_cpu_s"].values())
    attn_flops = sum(e["flops"] for e in result["attention_calls"])
    attn_s = sum(e["seconds"] for e in result["attention_calls"] if e["flops"])
    flops = sum(e["flops"] for e in result["matmul_shapes"])
    return {"matmul_s": matmul, "matmul_at_ceiling_s": at_rate, "matmul_gflop": flops / 1e9,
            "matmul_gflops_in_model": flops / matmul / 1e9 if matmul else None,
            "self_cpu_total_s": total, "share": {k: v / total for k, v in result["self_cpu_s"].items()},
            "attention_gflop": attn_flops / 1e9, "attention_gflops": attn_flops / attn_s / 1e9 if attn_s else None}


def median_run(runs: list[dict]) -> dict:
    """The medians of the repeats' figures (the profile's categories and the ceiling)."""
    kinds = {k for r in runs for k in r["self_cpu_s"]}
    return {"wall_s": statistics.median(r["wall_s"] for r in runs),
            "self_cpu_s": {k: statistics.median(r["self_cpu_s"].get(k, 0.0) for r in runs) for k in kinds},
            "ceiling": {k: statistics.median(r["ceiling"][k] or 0.0 for r in runs)
                        for k in ("matmul_s", "matmul_at_ceiling_s", "matmul_gflop", "matmul_gflops_in_model",
                                  "self_cpu_total_s", "attention_gflop", "attention_gflops")}}


def child(args, backend: str) -> dict:
    cmd = [sys.executable, __file__, "--child", "--backend", backend, "--family", args.family, "--preset",
           args.preset, "--height", str(args.height), "--width", str(args.width), "--steps", str(args.steps),
           "--guidance-scale", str(args.guidance_scale)]
    print(f"{backend} ...", flush=True)
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{backend} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", default="flux.2")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--height", type=int, default=384)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--guidance-scale", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--backend", default="sglang", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = profile(args)
        result["ceiling"] = ceiling(result)
        print(json.dumps(result))
        return
    runs = {"sglang": [], "diffusers": []}
    for i in range(args.repeats):  # native first on odd repeats, diffusers first on even ones
        for backend in (("sglang", "diffusers") if i % 2 == 0 else ("diffusers", "sglang")):
            runs[backend].append(child(args, backend))
    medians = {name: median_run(r) for name, r in runs.items()}
    native, ref = medians["sglang"], medians["diffusers"]
    summary = {}
    for name, run in medians.items():
        c = run["ceiling"]
        summary[name] = {"wall_s": run["wall_s"], "self_cpu_s": {k: round(v, 3) for k, v in run["self_cpu_s"].items()},
                         "outside_ops_s": round(run["wall_s"] - c["self_cpu_total_s"], 3),
                         "matmul_s": round(c["matmul_s"], 3), "matmul_at_ceiling_s": round(c["matmul_at_ceiling_s"], 3),
                         "matmul_gflop": round(c["matmul_gflop"], 1),
                         "matmul_gflops_in_model": c["matmul_gflops_in_model"],
                         "attention_gflop": round(c["attention_gflop"], 1), "attention_gflops": c["attention_gflops"]}
        print(f"{name}: {run['wall_s']:.2f} s wall; self CPU " + ", ".join(
            f"{k} {v:.2f} s" for k, v in sorted(run["self_cpu_s"].items(), key=lambda kv: -kv[1]))
            + f", outside ops {run['wall_s'] - c['self_cpu_total_s']:.2f} s"
            + f"; matmul {c['matmul_gflop']:.0f} GFLOP at {c['matmul_gflops_in_model'] or 0:.1f} GFLOP/s "
              f"(alone, the same shapes: {c['matmul_at_ceiling_s']:.2f} s); attention {c['attention_gflop']:.0f} GFLOP "
              f"at {c['attention_gflops'] or 0:.1f} GFLOP/s")
    # the best native could do: its matmuls at the ceiling, everything else at zero
    best = native["ceiling"]["matmul_at_ceiling_s"] + native["self_cpu_s"].get("convolution", 0.0)
    ref_cpu = sum(ref["self_cpu_s"].values())
    summary["diffusers_over_native_self_cpu"] = ref_cpu / sum(native["self_cpu_s"].values())
    summary["diffusers_over_native_bound"] = ref_cpu / best
    print(f"diffusers / native, self CPU: {summary['diffusers_over_native_self_cpu']:.2f}x; bound if native's "
          f"matmuls ran at the ceiling and nothing but them and the VAE convolutions took time: "
          f"{summary['diffusers_over_native_bound']:.2f}x")
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = RESULTS / f"ceiling-{args.family}-{args.preset}-cpu-{stamp}.json"
    path.write_text(json.dumps({"benchmark": "ceiling", "family": args.family, "preset": args.preset,
                                "request": {"height": args.height, "width": args.width, "steps": args.steps,
                                            "guidance_scale": args.guidance_scale},
                                "summary": summary, "runs": runs, "machine": machine_info()}, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
