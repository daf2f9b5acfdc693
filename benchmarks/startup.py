"""Start-up time, as a user meets it: whole processes, timed from outside.

- `sglang generate --help` (target: under 0.5 s here);
- the demo generation, `sglang generate --prompt ...` with no model path (target: at most 5 s
  here), with the CLI's own account of the work ("time: X s") beside the whole process, so that
  what comes before the work (interpreter, imports, model load) is the difference;
- one more demo generation under `python -X importtime`, whose import time is summed by
  top-level package: where the time before the work goes.

Runs alternate (help, demo, help, demo, ...) after one untimed warm-up of each, which also
writes the byte-code caches a user's second run has; medians with p20/p80. The load average is
recorded before and after: on a shared machine it decides the numbers. One JSON file per run in
benchmarks/results/ (or --output-dir).

    python benchmarks/startup.py [--runs 5] [--warmup 1] [--prompt "..."] [--output-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import REPO, machine_info  # noqa: E402

HELP_TARGET_S, DEMO_TARGET_S = 0.5, 5.0
_IMPORT_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")
_WORK = re.compile(r"^time: ([\d.]+) s \((.*)\)", re.M)


def _cli(*args: str, python_flags: tuple[str, ...] = ()) -> tuple[float, float, subprocess.CompletedProcess]:
    """Wall seconds of a whole `sglang ...` process (fork to exit), its CPU seconds (user + system,
    less sensitive than the wall time to a loaded machine), and its result."""
    environ = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}  # as a user's shell
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, *python_flags, "-m", "sglang_diffusion", *args], capture_output=True,
                          text=True, env=environ, cwd=REPO)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"sglang {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return seconds, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), proc


def _stats(values: list[float]) -> dict:
    ordered = sorted(values)

    def q(p: float) -> float:
        return ordered[min(len(ordered) - 1, round(p * (len(ordered) - 1)))]

    return {"median": statistics.median(ordered), "p20": q(0.2), "p80": q(0.8), "runs": ordered}


def _work(stdout: str) -> tuple[float, dict]:
    """The CLI's own "time: X s (stage a s, ...)" line: seconds of work and per stage."""
    match = _WORK.search(stdout)
    if match is None:
        raise SystemExit(f"no timing line in the output of the demo generation:\n{stdout[-2000:]}")
    stages = {name: float(value) for name, value in re.findall(r"(\w+) ([\d.]+) s", match.group(2))}
    return float(match.group(1)), stages


def import_breakdown(stderr: str, top: int = 15) -> dict:
    """`-X importtime` output -> total import seconds and the self time summed per top-level package."""
    per_package: Counter = Counter()
    for line in stderr.splitlines():
        match = _IMPORT_LINE.match(line)
        if match:
            per_package[match.group(4).split(".")[0]] += int(match.group(1))
    total = sum(per_package.values())
    return {"total_s": total / 1e6,
            "by_package_s": {name: us / 1e6 for name, us in per_package.most_common(top)}}


def load_average() -> list[float]:
    return list(os.getloadavg())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs of each command (default: 5)")
    parser.add_argument("--prompt", default="a red circle moving right on a blue background")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs of each command first (default: 1)")
    parser.add_argument("--output-dir", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="startup-") as out:
        demo = ("generate", "--prompt", args.prompt, "--output-path", out)
        load_before = load_average()
        for _ in range(args.warmup):  # byte-code caches written, the demo model built once
            _cli("generate", "--help")
            _cli(*demo)
        help_s, help_cpu, demo_s, demo_cpu, work_s, stages = [], [], [], [], [], []
        for _ in range(args.runs):
            seconds, cpu, _ = _cli("generate", "--help")
            help_s.append(seconds)
            help_cpu.append(cpu)
            seconds, cpu, proc = _cli(*demo)
            demo_s.append(seconds)
            demo_cpu.append(cpu)
            work, per_stage = _work(proc.stdout)
            work_s.append(work)
            stages.append(per_stage)
        *_, traced = _cli(*demo, python_flags=("-X", "importtime"))
        load_after = load_average()

    demo_stats, work_stats = _stats(demo_s), _stats(work_s)
    result = {
        "benchmark": "startup", "machine": machine_info(), "load_average_before": load_before,
        "load_average_after": load_after, "runs": args.runs, "warmup": args.warmup, "demo_command": "sglang " + " ".join(demo[:3]),
        "help_s": _stats(help_s), "help_target_s": HELP_TARGET_S, "help_meets_target": _stats(help_s)["median"] < HELP_TARGET_S,
        "help_cpu_s": _stats(help_cpu), "demo_s": demo_stats, "demo_cpu_s": _stats(demo_cpu), "demo_work_s": work_stats, "demo_stages_s": stages,
        "demo_before_work_s": demo_stats["median"] - work_stats["median"],
        "demo_target_s": DEMO_TARGET_S, "demo_meets_target": demo_stats["median"] <= DEMO_TARGET_S,
        "demo_imports": import_breakdown(traced.stderr),
    }
    args.output_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = args.output_dir / f"startup-cpu-{stamp}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"sglang generate --help: median {result['help_s']['median']:.2f} s, CPU {result['help_cpu_s']['median']:.2f} s "
          f"(target < {HELP_TARGET_S} s)")
    print(f"demo generation: median {demo_stats['median']:.2f} s whole process (CPU {result['demo_cpu_s']['median']:.2f} s), "
          f"{work_stats['median']:.2f} s of work, {result['demo_before_work_s']:.2f} s before/around it "
          f"(target <= {DEMO_TARGET_S} s)")
    imports = result["demo_imports"]
    print(f"imports: {imports['total_s']:.2f} s: " + ", ".join(f"{k} {v:.2f}" for k, v in
                                                              list(imports["by_package_s"].items())[:8]))
    print(f"load average {load_before[0]:.1f} -> {load_after[0]:.1f}; wrote {path}")
    return result


if __name__ == "__main__":
    main()
