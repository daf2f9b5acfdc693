"""Step caching: exact native against each cache setting on the same seed, speed-up and PSNR/SSIM.

    python benchmarks/cache.py [--family wan2.1-t2v] [--preset small] [--height 384 --width 512
        --num-frames 9 --steps 30 --guidance-scale 5] [--settings exact,teacache-1.5,...] [--repeats 2]

Each measurement runs in a fresh process: it builds the pipeline through the engine's loader,
runs a 1-step warm-up of the same shape, then the timed request, and saves its frames. The
settings run in turn (`--repeats` times), exact first and once more at the end, so that the
reference brackets the run on a shared machine; speed-ups are the median exact time over the
setting's median, of wall time and of process CPU time (the steadier under load).
PSNR and SSIM are against the exact native output of the same request (uint8 frames).

`diffusers-cache-dit` is Cache-DiT (the cache-dit package) on the diffusers backend, with the
same DBCache knobs as `dbcache` (SGLang diffusion's defaults).

Writes one JSON file to benchmarks/results/: per setting, its options, block-steps computed
and skipped, times, speed-ups, PSNR, SSIM; the target check; the machine and the load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info  # noqa: E402 (after the path it is found on)

RESULTS = Path(__file__).resolve().parent / "results"
PROMPT = "A cat walks on the grass, realistic style, gentle camera movement"
NEGATIVE = "blurry, low quality"
# SGLang diffusion's Cache-DiT defaults (SGLANG_CACHE_DIT_*): F1B0, 4 warm-up steps, rdt 0.24, at most 3 in a row
DBCACHE = dict(Fn_compute_blocks=1, Bn_compute_blocks=0, max_warmup_steps=4, residual_diff_threshold=0.24,
               max_continuous_cached_steps=3)
# name -> (backend, cache_dit_params keys or None, SamplingParams fields); conservative to aggressive
SETTINGS = {
    "exact": ("sglang", None, {}),
    "dbcache": ("sglang", DBCACHE, {}),
    "dbcache-taylorseer": ("sglang", dict(DBCACHE, max_continuous_cached_steps=-1, enable_taylorseer=True,
                                          taylorseer_order=1), {}),
    "scm-fast-static-taylorseer": ("sglang", dict(DBCACHE, scm_preset="fast", scm_policy="static",
                                                  enable_taylorseer=True, taylorseer_order=1), {}),
    "teacache-0.8": ("sglang", None, dict(enable_teacache=True, teacache_thresh=0.8)),
    "teacache-1.5": ("sglang", None, dict(enable_teacache=True, teacache_thresh=1.5)),
    "teacache-2.2": ("sglang", None, dict(enable_teacache=True, teacache_thresh=2.2)),
    "teacache-3.0": ("sglang", None, dict(enable_teacache=True, teacache_thresh=3.0)),
    "diffusers-cache-dit": ("diffusers", DBCACHE, {}),
}
TARGET = {"speedup": 2.5, "psnr_db": 31.0}


# ---- one measurement (child process) -----------------------------------------------------------


def measure(args, name: str, frames_path: str) -> dict:
    import torch

    from sglang_diffusion.config.cache import CacheDitParams, DBCacheParams
    from sglang_diffusion.config.sampling_params import SamplingParams
    from sglang_diffusion.config.server_args import ServerArgs
    from sglang_diffusion.pipelines.registry import build_pipeline
    from sglang_diffusion.platform import Platform
    from sglang_diffusion.testing import cached_model

    backend, cache, fields = SETTINGS[name]
    server = dict(model_path=str(cached_model(args.family, args.preset)), backend=backend)
    if cache is not None and backend == "sglang":
        server.update(enable_cache_dit=True, cache_dit_params=CacheDitParams(DBCacheParams(**cache)))
    elif cache is not None:  # cache-dit's own config format, on the diffusers backend
        config = Path(frames_path).with_suffix(".yaml")
        config.write_text(json.dumps({"cache_config": cache}))
        server["cache_dit_config"] = str(config)
    pipe = build_pipeline(ServerArgs(**server), Platform.current())
    request = dict(prompt=PROMPT, negative_prompt=NEGATIVE, height=args.height, width=args.width,
                   num_frames=args.num_frames, guidance_scale=args.guidance_scale, seed=0, save_output=False,
                   **fields)
    pipe.generate(SamplingParams(**request, num_inference_steps=1))  # warm-up, same shapes
    wall, cpu = time.perf_counter(), time.process_time()
    out = pipe.generate(SamplingParams(**request, num_inference_steps=args.steps))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    np.save(frames_path, out.frames)
    return {"setting": name, "backend": backend, "cache_dit_params": cache, "sampling": fields,
            "cache": getattr(out, "cache", None), "pipeline": pipe.describe(), "total_s": wall, "cpu_s": cpu,
            "stages_s": out.timings, "threads": torch.get_num_threads()}


def child(args, name: str, frames_path: str) -> dict:
    cmd = [sys.executable, __file__, "--child", name, "--frames-path", frames_path, "--family", args.family,
           "--preset", args.preset, "--height", str(args.height), "--width", str(args.width),
           "--num-frames", str(args.num_frames), "--steps", str(args.steps),
           "--guidance-scale", str(args.guidance_scale)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---- quality -------------------------------------------------------------------------------------


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def ssim(a: np.ndarray, b: np.ndarray, window: int = 7) -> float:
    """Mean SSIM over frames and channels (uint8 [..., H, W, 3]), a uniform `window` x `window` window."""
    import torch
    import torch.nn.functional as F

    def planes(x):  # [..., H, W, C] -> [N, 1, H, W] in [0, 255]
        x = torch.from_numpy(x.astype(np.float64)).reshape(-1, *x.shape[-3:])
        return x.permute(0, 3, 1, 2).reshape(-1, 1, *x.shape[1:3])

    x, y = planes(a), planes(b)
    mean = lambda t: F.avg_pool2d(t, window, stride=1)  # noqa: E731
    mx, my = mean(x), mean(y)
    vx, vy, cxy = mean(x * x) - mx**2, mean(y * y) - my**2, mean(x * y) - mx * my
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(s.mean())


# ---- the run -------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", default="wan2.1-t2v")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--height", type=int, default=384)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--num-frames", type=int, default=9)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--guidance-scale", type=float, default=5.0)
    parser.add_argument("--settings", default=",".join(SETTINGS),
                        help=f"comma-separated, from {', '.join(SETTINGS)} (exact is always run)")
    parser.add_argument("--repeats", type=int, default=1, help="passes over the settings")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--frames-path", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print(json.dumps(measure(args, args.child, args.frames_path)))
        return

    names = ["exact", *(n for n in args.settings.split(",") if n and n != "exact")]
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        raise SystemExit(f"unknown settings {unknown}; known: {', '.join(SETTINGS)}")
    from sglang_diffusion.testing import cached_model

    cached_model(args.family, args.preset)  # built once, before anything is timed
    runs: dict[str, list] = {n: [] for n in names}
    frames: dict[str, np.ndarray] = {}
    loads = [os.getloadavg()]
    with tempfile.TemporaryDirectory() as tmp:
        order = [n for _ in range(args.repeats) for n in names] + ["exact"]
        for i, name in enumerate(order):
            path = str(Path(tmp) / f"{name}-{i}.npy")
            r = child(args, name, path)
            runs[name].append(r)
            frames.setdefault(name, np.load(path))
            loads.append(os.getloadavg())
            print(f"[{i + 1}/{len(order)}] {name:28s} total {r['total_s']:7.1f} s (cpu {r['cpu_s']:7.1f} s)  "
                  f"{r['cache'] or ''}", file=sys.stderr)
    exact_wall = statistics.median(r["total_s"] for r in runs["exact"])
    exact_cpu = statistics.median(r["cpu_s"] for r in runs["exact"])
    summary = {}
    for name, rs in runs.items():
        wall, cpu = statistics.median(r["total_s"] for r in rs), statistics.median(r["cpu_s"] for r in rs)
        summary[name] = {"backend": rs[0]["backend"], "cache_dit_params": rs[0]["cache_dit_params"],
                         "sampling": rs[0]["sampling"], "cache": rs[0]["cache"], "total_s": wall, "cpu_s": cpu,
                         "n": len(rs), "speedup_wall": exact_wall / wall, "speedup_cpu": exact_cpu / cpu,
                         "psnr_db": psnr(frames[name], frames["exact"]),
                         "ssim": ssim(frames[name], frames["exact"])}
        s = summary[name]
        print(f"{name:28s} {s['speedup_wall']:5.2f}x wall {s['speedup_cpu']:5.2f}x cpu  PSNR {s['psnr_db']:6.2f} dB  "
              f"SSIM {s['ssim']:.4f}", file=sys.stderr)
    native = {n: s for n, s in summary.items() if s["backend"] == "sglang" and n != "exact"}
    meets = [n for n, s in native.items() if s["speedup_wall"] >= TARGET["speedup"] and s["psnr_db"] >= TARGET["psnr_db"]]
    target = {**TARGET, "settings_meeting_it": meets}
    if "diffusers-cache-dit" in summary:
        ref = summary["diffusers-cache-dit"]
        target["faster_than_diffusers_cache_dit_at_equal_or_better_psnr"] = [
            n for n in meets if summary[n]["total_s"] < ref["total_s"] and summary[n]["psnr_db"] >= ref["psnr_db"]]
    result = {"benchmark": "cache", "family": args.family, "preset": args.preset,
              "request": {"height": args.height, "width": args.width, "num_frames": args.num_frames,
                          "steps": args.steps, "guidance_scale": args.guidance_scale, "prompt": PROMPT,
                          "negative_prompt": NEGATIVE, "seed": 0},
              "target": target, "summary": summary, "runs": runs, "machine": machine_info(),
              "load_average": {"start": loads[0], "end": loads[-1], "max_1min": max(l[0] for l in loads)}}
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    cpu = "gpu" if result["machine"]["gpu"] else "cpu"
    path = RESULTS / f"cache-{args.family}-{args.preset}-{cpu}-{stamp}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"target {TARGET}: met by {meets or 'none'}", file=sys.stderr)
    print(path)


if __name__ == "__main__":
    main()
