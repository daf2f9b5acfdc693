"""The prepared GPU check: one run on a card tests and times everything, into one JSON.

    bash scripts/gpu_check.sh [options]          # on the GPU machine: setup, build _C, then this
    python benchmarks/gpu/check.py --dry-run     # on a CPU: tiny shapes, the same code paths

Sections, in this order, each in its own process under its own time budget (a failure, a
crash or a timeout is recorded and the next section still runs; what does not fit in the
overall budget is recorded as skipped):

- environment: card, driver, versions, whether _C has its CUDA kernels, each attention
  backend's verdict for bf16 / head dim 128.
- gpu_tests: `pytest -m gpu` over the test files that carry the marker: every op through
  each implementation the card can run (triton, native, torch) and every attention backend,
  against the references, in fp32 / bf16 / fp16.
- kernels: the benchmarks/kernels/*.py `measure` functions. Memory-bound ops (norm +
  modulation, RoPE, QK-norm, GELU, the Ulysses layouts) in GB/s beside a measured device
  copy of the same bytes; attention at S = 4k, 16k, 32k, D = 128, bf16, in TFLOP/s against
  torch SDPA, beside a measured bf16 matmul.
- e2e:<family>: seconds per denoising step, native pipeline against diffusers' on the same
  random-weight `full` folder (sglang_diffusion.testing) with the same seed: Wan2.1-T2V-1.3B
  at 832x480, 81 frames; FLUX.1 and Qwen-Image at 1024x1024, each only when
  pipelines/registry.py has it natively at run time. Steps are the intervals between the
  pipelines' per-step callbacks (the first step, which holds one-time costs, is reported
  apart); the two outputs are compared too (PSNR), as a sanity figure.

The record (card, versions, the setup steps of scripts/gpu_check.sh, every figure, the
failures) goes to --out as gpu_check-<card>-<time>.json, the children's output to a .log
beside it; a short table is printed last. `--dry-run` runs every section on the CPU with
tiny shapes and the `tiny` presets in fp32 (tests/test_gpu_check.py runs it in CI); its
figures mean nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.util
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "benchmarks" / "kernels"))

from machine import machine_info  # noqa: E402

PROMPT = "A cat walks on the grass, realistic style, gentle camera movement"


@dataclasses.dataclass(frozen=True)
class Sizes:
    """What each section runs at: a card's real sizes, or a CPU dry run's tiny ones."""

    dtype: str
    tokens: int  # a Wan2.1-1.3B video's: 21 x 30 x 52 at 832x480, 81 frames
    heads: int
    head_dim: int
    ffn: int
    attention_seq_lens: tuple[int, ...]
    copy_bytes: int
    matmul_n: int
    reps: int
    attention_reps: int
    preset: str
    requests: dict  # family -> height, width (num_frames)
    steps: int  # per e2e run: steps - 1 intervals are timed
    budget_s: float  # all sections together
    section_budget_s: dict  # section -> (the least time it is started with, its limit)
    test_workers: int  # pytest-xdist processes for the gpu tests


GPU = Sizes(
    dtype="bfloat16", tokens=32760, heads=12, head_dim=128, ffn=8960, attention_seq_lens=(4096, 16384, 32768),
    copy_bytes=2**31, matmul_n=8192, reps=20, attention_reps=5, preset="full",
    requests={"wan2.1-t2v": dict(height=480, width=832, num_frames=81),
              "flux.1": dict(height=1024, width=1024), "qwen-image": dict(height=1024, width=1024)},
    steps=4, budget_s=330, test_workers=4,
    # FLUX.1's and Qwen-Image's `full` folders are 24 and 41 GB, written once and read twice.
    section_budget_s={"environment": (10, 60), "gpu_tests": (60, 180), "kernels": (45, 150),
                      "e2e:wan2.1-t2v": (90, 180), "e2e:flux.1": (120, 180), "e2e:qwen-image": (150, 240)},
)
DRY = Sizes(
    dtype="float32", tokens=64, heads=2, head_dim=32, ffn=128, attention_seq_lens=(64, 128),
    copy_bytes=2**20, matmul_n=128, reps=2, attention_reps=2, preset="tiny",
    requests={"wan2.1-t2v": dict(height=64, width=64, num_frames=9),
              "flux.1": dict(height=64, width=64), "qwen-image": dict(height=64, width=64)},
    # A CPU shared with other work can be slow: generous limits, the run takes a minute or two.
    steps=3, budget_s=600, test_workers=1, section_budget_s=dict.fromkeys(GPU.section_budget_s, (5, 150)),
)
SECTIONS = tuple(GPU.section_budget_s)


class Skipped(Exception):
    """A section that has nothing to run here (recorded as skipped, not failed)."""


# ---- sections (each runs in a child process) ---------------------------------------------------


def _device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def environment(sizes: Sizes) -> dict:
    import diffusers
    import torch
    import transformers

    from sglang_diffusion.attention.selector import BACKENDS
    from sglang_diffusion.ops import _native

    device = _device()
    native = _native.native_library()
    info = {"python": sys.version.split()[0], "torch": torch.__version__, "torch_cuda": torch.version.cuda,
            "diffusers": diffusers.__version__, "transformers": transformers.__version__,
            "native": {"available": native.available, "with_cuda": getattr(native, "with_cuda", False),
                       "cpu_isa": getattr(native, "cpu_isa", None), "missing_reason": native.missing_reason}}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["card"] = {"name": props.name, "capability": list(torch.cuda.get_device_capability(device)),
                        "multiprocessors": props.multi_processor_count, "memory_gib": props.total_memory / 2**30}
        query = "name,driver_version,memory.total,clocks.sm,clocks.max.sm,temperature.gpu,power.draw"
        smi = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
                             capture_output=True, text=True, check=False)
        info["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    dtype = getattr(torch, sizes.dtype)
    info["attention_backends"] = {}
    for name, cls in BACKENDS.items():
        try:
            info["attention_backends"][name] = cls.why_not(device, dtype, sizes.head_dim, {}) or "runs"
        except Exception as exc:  # noqa: BLE001 - a backend that wants options: its answer, not a failure
            info["attention_backends"][name] = f"{type(exc).__name__}: {exc}"
    return info


def _junit_summary(path: Path) -> dict:
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    failed = []
    for case in suite.iter("testcase"):
        for tag in ("failure", "error"):
            problem = case.find(tag)
            if problem is not None:
                message = (problem.get("message") or problem.text or "").strip()
                failed.append({"test": f"{case.get('classname')}::{case.get('name')}", "kind": tag,
                               "message": message[:400]})
    counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return {**counts, "seconds": float(suite.get("time", 0.0)), "failed": failed}


def gpu_tests(sizes: Sizes, budget_s: float) -> dict:
    """pytest -m gpu over every test file that carries the marker (found at run time)."""
    files = sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").rglob("test_*.py")
                   if "mark.gpu" in p.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", "-rfE",
               f"--junitxml={junit}", *files]
        if importlib.util.find_spec("pytest_timeout"):
            cmd[4:4] = ["--timeout", "120"]  # a hung test fails alone; the report still comes
        if sizes.test_workers > 1 and importlib.util.find_spec("xdist"):
            cmd[4:4] = ["-n", str(sizes.test_workers)]  # Triton compiles each kernel variant: on several cores
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=max(5.0, budget_s - 10))
        print(proc.stdout[-20000:], proc.stderr[-5000:], sep="\n")
        if not junit.exists():
            raise RuntimeError(f"pytest exited {proc.returncode} without a report:\n{proc.stderr[-2000:]}")
        summary = _junit_summary(junit)
    result = {"files": files, "returncode": proc.returncode, **summary}
    result["errors_list"] = [f"{f['test']}: {f['message'][:200]}" for f in summary["failed"]]
    return result


def kernels(sizes: Sizes) -> dict:
    """Every kernel benchmark's `measure` at these sizes; one op failing leaves the others."""
    import torch

    import activation
    import all_to_all
    import attention
    import harness
    import norm
    import qk_norm
    import rope

    device, dtype = _device(), getattr(torch, sizes.dtype)
    s, h, d, reps = sizes.tokens, sizes.heads, sizes.head_dim, sizes.reps
    runs = {
        "norm_modulate": lambda: norm.measure(device, dtype, 1, s, h * d, "layer", 3, reps),
        "rope": lambda: rope.measure(device, dtype, 1, s, h, d, 3, reps),
        "qk_norm": lambda: qk_norm.measure(device, dtype, 1, s, h, d, "across", 3, reps),
        "gelu_tanh": lambda: activation.measure(device, dtype, (s, sizes.ffn), 3, reps),
        "all_to_all_layout": lambda: all_to_all.measure(device, dtype, 1, s, h, d, 2, 3, reps),
    }
    for seq_len in sizes.attention_seq_lens:
        runs[f"attention_s{seq_len}"] = lambda seq_len=seq_len: attention.measure(
            device, dtype, 1, seq_len, h, d, 1, sizes.attention_reps, matmul_n=sizes.matmul_n)
    out = {"device": str(device), "dtype": sizes.dtype,
           "copy_gbs": harness.copy_bandwidth_gbs(sizes.copy_bytes, device), "copy_bytes": sizes.copy_bytes,
           "ops": {}, "errors_list": []}
    for name, run in runs.items():
        start = time.perf_counter()
        try:
            out["ops"][name] = {**run(), "seconds": time.perf_counter() - start}
        except Exception as exc:  # noqa: BLE001 - recorded, the next op still runs
            traceback.print_exc()
            out["errors_list"].append(f"{name}: {type(exc).__name__}: {exc}"[:500])
        print(f"kernels: {name} {time.perf_counter() - start:.1f} s", flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return out


def _free_cuda() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _run_backend(folder: Path, backend: str, request: dict, steps: int) -> tuple[dict, "object"]:
    """One generation through `backend`; the seconds of each denoising step from its callbacks."""
    import torch

    from sglang_diffusion.config.sampling_params import SamplingParams
    from sglang_diffusion.config.server_args import ServerArgs
    from sglang_diffusion.pipelines.hooks import StepHooks
    from sglang_diffusion.pipelines.registry import build_pipeline
    from sglang_diffusion.platform import Platform

    platform = Platform.current()
    cuda = platform.device.type == "cuda"
    # The DiT in bf16 on a card (fp32 on a CPU, where bf16 runs far slower); the VAE runs once,
    # after the timed steps: bf16 halves an 81-frame decode.
    precision = {"dit_precision": "bf16", "vae_precision": "bf16"} if cuda else {"dit_precision": "fp32"}
    server = ServerArgs(model_path=str(folder), backend=backend, **precision)
    start = time.perf_counter()
    pipe = build_pipeline(server, platform)
    load_s = time.perf_counter() - start
    stamps: list[float] = []

    def on_progress(done: int, total: int) -> None:
        if cuda:
            torch.cuda.synchronize(platform.device)
        stamps.append(time.perf_counter())

    params = SamplingParams(prompt=PROMPT, **request, num_inference_steps=steps, seed=0, save_output=False)
    start = time.perf_counter()
    out = pipe.generate(params, StepHooks(on_progress=on_progress))
    total_s = time.perf_counter() - start
    if len(stamps) != steps:
        raise RuntimeError(f"{backend}: {len(stamps)} step callbacks for {steps} steps")
    step_s = [b - a for a, b in zip(stamps, stamps[1:])]
    result = {"pipeline": pipe.describe(), "load_s": load_s, "total_s": total_s,
              "first_step_s": stamps[0] - start, "step_s": step_s, "step_median_s": statistics.median(step_s),
              "guidance_scale": out.params.guidance_scale, "stages_s": out.timings, "frames": list(out.frames.shape)}
    if cuda:
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated(platform.device) / 2**30
    frames = out.frames
    del pipe, out
    _free_cuda()
    return result, frames


def e2e(sizes: Sizes, family: str, scratch: str | None) -> dict:
    """`scratch`: where the model folder goes (a `full` one takes up to 41 GB)."""
    import numpy as np

    from sglang_diffusion.pipelines.registry import NATIVE_PIPELINES
    from sglang_diffusion.testing import cached_model, pipeline_class

    class_name = pipeline_class(family)
    if class_name not in NATIVE_PIPELINES:
        raise Skipped(f"no native pipeline for {class_name} in pipelines/registry.py yet")
    request = sizes.requests[family]
    with tempfile.TemporaryDirectory(prefix="models-", dir=scratch) as cache:
        start = time.perf_counter()
        folder = cached_model(family, sizes.preset, cache_dir=cache)
        build_s = time.perf_counter() - start
        _free_cuda()
        runs, frames = {}, {}
        for backend in ("sglang", "diffusers"):
            runs[backend], frames[backend] = _run_backend(folder, backend, request, sizes.steps)
            print(f"e2e {family}: {backend} {runs[backend]['step_median_s']:.3f} s/step", flush=True)
    a, b = (frames[k].astype(np.float64) for k in ("sglang", "diffusers"))
    mse = float(((a - b) ** 2).mean()) if a.shape == b.shape else None
    psnr = 10 * float(np.log10(255.0**2 / mse)) if mse else None  # None: identical, or shapes differ
    return {"family": family, "preset": sizes.preset, "request": {**request, "steps": sizes.steps, "seed": 0},
            "build_s": build_s, "native": runs["sglang"], "diffusers": runs["diffusers"],
            "speedup_per_step": runs["diffusers"]["step_median_s"] / runs["sglang"]["step_median_s"],
            "output_psnr_db": psnr, "outputs_identical": mse == 0}


def run_section(name: str, sizes: Sizes, budget_s: float, scratch: str | None = None) -> dict:
    if name == "environment":
        return environment(sizes)
    if name == "gpu_tests":
        return gpu_tests(sizes, budget_s)
    if name == "kernels":
        return kernels(sizes)
    return e2e(sizes, name.split(":", 1)[1], scratch)


# ---- the driver ------------------------------------------------------------------------------------


def _scratch_root(dry_run: bool) -> str | None:
    """Where the sections write (the e2e model folders): RAM-backed /dev/shm on a card's
    machine when it has room for Qwen-Image's 41 GB, so writing and reading them costs no disk."""
    shm = Path("/dev/shm")
    if not dry_run and shm.is_dir() and shutil.disk_usage(shm).free >= 48 * 2**30:
        return str(shm)
    return None


def _child(name: str, args, budget_s: float, log) -> dict:
    """Runs one section in a fresh process (its own GPU memory; a crash stays there)."""
    with tempfile.TemporaryDirectory(prefix="gpu-check-", dir=_scratch_root(args.dry_run)) as tmp:
        result_path = Path(tmp) / "result.json"
        cmd = [sys.executable, __file__, "--section", name, "--result", str(result_path), "--scratch", tmp,
               "--section-budget-s", str(budget_s)] + (["--dry-run"] if args.dry_run else [])
        log.write(f"\n===== {name} (budget {budget_s:.0f} s)\n")
        log.flush()
        start = time.perf_counter()
        try:
            proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=budget_s, cwd=REPO)
        except subprocess.TimeoutExpired:  # its model folder goes with `tmp`: the next section needs the disk
            return {"status": "timed out", "seconds": time.perf_counter() - start,
                    "error": f"over its {budget_s:.0f} s budget"}
        seconds = time.perf_counter() - start
        if result_path.exists():
            return {**json.loads(result_path.read_text()), "seconds": seconds}
        return {"status": "failed", "seconds": seconds, "error": f"the section's process exited {proc.returncode} "
                "without a result (crashed?): see the log"}


def _section_main(args) -> None:
    sizes = DRY if args.dry_run else GPU
    try:
        result = {"status": "ok", "result": run_section(args.section, sizes, args.section_budget_s, args.scratch)}
        if result["result"].get("errors_list") or result["result"].get("failed"):
            result["status"] = "failed"
    except Skipped as why:
        result = {"status": "skipped", "error": str(why)}
    except Exception as exc:  # noqa: BLE001 - the driver records it and goes on
        traceback.print_exc()
        result = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"[-2000:],
                  "traceback": traceback.format_exc()[-4000:]}
    Path(args.result).write_text(json.dumps(result, indent=2, default=str) + "\n")


def _setup_steps(path: str | None) -> list[dict]:
    """scripts/gpu_check.sh's steps: lines of `name rc seconds`."""
    if not path or not Path(path).exists():
        return []
    steps = []
    for line in Path(path).read_text().splitlines():
        name, rc, seconds = line.split()
        steps.append({"step": name, "returncode": int(rc), "seconds": float(seconds)})
    return steps


def _failures(sections: dict, setup: list[dict]) -> list[str]:
    found = [f"setup {s['step']}: exit {s['returncode']}" for s in setup if s["returncode"] != 0]
    for name, sec in sections.items():
        if sec["status"] in ("failed", "timed out"):
            details = (sec.get("result") or {}).get("errors_list") or [sec.get("error", "")]
            found += [f"{name}: {d}" for d in details]
    return found


def _table(rec: dict) -> str:
    rows = [f"GPU check{' (DRY RUN: figures mean nothing)' if rec['dry_run'] else ''}: "
            f"{rec['machine'].get('gpu') or rec['machine'].get('cpu')}, total {rec['total_s']:.0f} s"]
    for step in rec["setup"]:
        rows.append(f"  setup {step['step']:<22} exit {step['returncode']}  {step['seconds']:.0f} s")
    for name, sec in rec["sections"].items():
        note = sec.get("error", "") if sec["status"] != "ok" else ""
        rows.append(f"  {name:<28} {sec['status']:<9} {sec.get('seconds', 0):6.0f} s  {note[:70]}")
    tests = rec["sections"].get("gpu_tests", {}).get("result")
    if tests:
        rows.append(f"tests: {tests['passed']} passed, {tests['failures'] + tests['errors']} failed, "
                    f"{tests['skipped']} skipped")
        rows += [f"  FAILED {f['test']}" for f in tests["failed"][:10]]
    k = rec["sections"].get("kernels", {}).get("result")
    if k:
        rows.append(f"kernels ({k['dtype']}): device copy {k['copy_gbs']:.0f} GB/s")
        for op, r in k["ops"].items():
            res = r["results"]
            if "gbs" in next(iter(res.values())):
                best = max((n for n in res if not n.endswith("eager")), key=lambda n: res[n]["gbs"])
                share = 100 * res[best]["gbs"] / r["copy_gbs"]
                rows.append(f"  {op:<20} best {best:<26} {res[best]['gbs']:8.0f} GB/s ({share:3.0f}% of copy), "
                            f"{r['speedup_vs_eager'][best]:.2f}x eager")
            else:
                tf = {n: v["gflops"] / 1e3 for n, v in res.items()}
                ours = {n: t for n, t in tf.items() if n != "sdpa"}
                best = max(ours, key=ours.get)
                rows.append(f"  {op:<20} sdpa {tf['sdpa']:7.1f} TFLOP/s, best {best} {ours[best]:7.1f} "
                            f"({ours[best] / tf['sdpa']:.2f}x); matmul {r['matmul_gflops'] / 1e3:.0f} TFLOP/s")
    for name, sec in rec["sections"].items():
        r = sec.get("result") or {}
        if name.startswith("e2e:") and "native" in r:
            psnr = r["output_psnr_db"]
            rows.append(f"{name}: native {r['native']['step_median_s']:.3f} s/step, diffusers "
                        f"{r['diffusers']['step_median_s']:.3f} s/step: {r['speedup_per_step']:.2f}x "
                        f"(outputs {'identical' if r['outputs_identical'] else f'{psnr:.1f} dB PSNR'})")
    rows.append(f"failures: {len(rec['failures'])}")
    rows += [f"  {f[:150]}" for f in rec["failures"][:15]]
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU: checks the code paths")
    parser.add_argument("--out", type=Path, help="where the JSON and the log go (default: benchmarks/results/, "
                        "a temporary folder for a dry run)")
    parser.add_argument("--budget-s", type=float, help=f"time for all sections (default {GPU.budget_s:.0f} s, "
                        f"{DRY.budget_s:.0f} s dry)")
    parser.add_argument("--sections", help=f"comma-separated subset of {', '.join(SECTIONS)}")
    parser.add_argument("--setup-log", help="scripts/gpu_check.sh's record of its setup steps")
    parser.add_argument("--section", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--section-budget-s", type=float, default=60.0, help=argparse.SUPPRESS)
    parser.add_argument("--scratch", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.section:
        _section_main(args)
        return

    names = args.sections.split(",") if args.sections else list(SECTIONS)
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        parser.error(f"unknown sections {unknown}; valid: {', '.join(SECTIONS)}")
    sizes = DRY if args.dry_run else GPU
    budget = args.budget_s or sizes.budget_s
    out_dir = args.out or (Path(tempfile.gettempdir()) / "sglang-diffusion-gpu-check" if args.dry_run
                           else REPO / "benchmarks" / "results")
    out_dir.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    where = "dry_run-cpu" if args.dry_run else (machine["gpu"] or "cpu").replace(" ", "_")
    stem = f"gpu_check-{where}-{datetime.datetime.now(datetime.timezone.utc).strftime('%Y%m%dT%H%M%SZ')}"
    log_path = out_dir / f"{stem}.log"
    start = time.perf_counter()
    sections: dict = {}
    with open(log_path, "w") as log:
        for name in names:
            left = budget - (time.perf_counter() - start)
            least, limit = sizes.section_budget_s[name]
            if left < least:
                sections[name] = {"status": "skipped", "error": f"time budget spent ({left:.0f} s left, it needs "
                                  f"{least} s): run it alone with --sections {name}"}
            else:
                sections[name] = _child(name, args, min(limit, left), log)
            print(f"[{time.perf_counter() - start:5.0f} s] {name}: {sections[name]['status']}", flush=True)
    setup = _setup_steps(args.setup_log)
    rec = {"benchmark": "gpu_check", "dry_run": args.dry_run, "machine": machine, "setup": setup,
           "budget_s": budget, "total_s": time.perf_counter() - start, "sections": sections,
           "failures": _failures(sections, setup), "log": log_path.name}
    path = out_dir / f"{stem}.json"
    path.write_text(json.dumps(rec, indent=2, default=str) + "\n")
    print(_table(rec))
    print(f"wrote {path}")
    sys.exit(1 if rec["failures"] else 0)


if __name__ == "__main__":
    main()
