"""Load test of `sglang serve`: N requests at a given concurrency, against a running server or,
with --sweep, servers it starts itself with batching off and on.

    python benchmarks/serving.py --url http://127.0.0.1:30010 --num-requests 32 --concurrency 4 \
        [--kind image|video] [--size 32x32] [--steps 2] [--num-frames 5] [--api-key KEY]
    python benchmarks/serving.py --sweep [--family flux.1] [--presets tiny,small] [--concurrency-levels 1,4,16] \
        [--rounds 2] [--max-batch-size 16] [--batching-delay-ms 50]

Each request is timed from send to answer (an image) or to completion (a video job, polled); the
batch sizes come from the server's /metrics (`sglang_diffusion_batch_size`, read before and after
a run). The sweep starts, per preset of the tiny-model factory, one server with batching off
(--max-batch-size 1) and one with it on, and runs every concurrency level on both in turn,
alternating off/on each round; the gain is the ratio of their median throughputs. Writes one JSON
file to benchmarks/results/: throughput, latency p50/p95/p99, batch sizes, errors by status, the
servers' /model_info, the load average, and the machine (server and client on the same machine).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info  # noqa: E402 (after the path it is found on)

RESULTS = Path(__file__).resolve().parent / "results"


def image_request(args, session: requests.Session, i: int) -> int:
    body = {"prompt": f"benchmark {i}", "size": args.size, "seed": i, "num_inference_steps": args.steps,
            "response_format": "b64_json"}
    return session.post(f"{args.url}/v1/images/generations", json=body, timeout=args.timeout).status_code


def video_request(args, session: requests.Session, i: int) -> int:
    body = {"prompt": f"benchmark {i}", "size": args.size, "seed": i, "num_inference_steps": args.steps,
            "num_frames": args.num_frames}
    response = session.post(f"{args.url}/v1/videos", json=body, timeout=args.timeout)
    if response.status_code != 200:
        return response.status_code
    video_id, deadline = response.json()["id"], time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        status = session.get(f"{args.url}/v1/videos/{video_id}", timeout=args.timeout).json()["status"]
        if status in ("completed", "failed"):
            return 200 if status == "completed" else 500
        time.sleep(0.05)
    return 504


def percentile(samples: list[float], q: float) -> float | None:
    if not samples:
        return None
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


_BATCH_SERIES = re.compile(r'^sglang_diffusion_batch_size_(bucket\{le="([^"]+)"\}|sum|count) (\S+)$', re.M)


def batch_sizes(url: str) -> dict:
    """The server's batch-size histogram: {"count", "sum", "buckets": {le: cumulative count}}."""
    text = requests.get(f"{url}/metrics", timeout=30).text
    out: dict = {"count": 0.0, "sum": 0.0, "buckets": {}}
    for series, le, value in _BATCH_SERIES.findall(text):
        if le:
            out["buckets"][le] = float(value)
        else:
            out[series] = float(value)
    return out


def batch_delta(before: dict, after: dict) -> dict:
    """What one run added to the histogram: requests by the size of the batch they ran in."""
    count = after["count"] - before["count"]
    by_size, below = {}, 0.0
    for le, cumulative in after["buckets"].items():
        n = cumulative - before["buckets"].get(le, 0.0) - below
        below += n
        if n:
            by_size[le] = int(n)
    return {"requests": int(count), "mean": (after["sum"] - before["sum"]) / count if count else None,
            "requests_by_batch_size_at_most": by_size}


def run(args) -> dict:
    session = requests.Session()
    if args.api_key:
        session.headers["Authorization"] = f"Bearer {args.api_key}"
    send = image_request if args.kind == "image" else video_request
    send(args, session, -1)  # warm-up, not counted
    before = batch_sizes(args.url)

    def timed(i: int) -> tuple[int, float]:
        start = time.perf_counter()
        status = send(args, session, i)
        return status, time.perf_counter() - start

    start = time.perf_counter()
    with ThreadPoolExecutor(args.concurrency) as pool:
        outcomes = list(pool.map(timed, range(args.num_requests)))
    wall = time.perf_counter() - start
    batches = batch_delta(before, batch_sizes(args.url))
    ok = [seconds for status, seconds in outcomes if status == 200]
    statuses: dict[str, int] = {}
    for status, _ in outcomes:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    return {
        "throughput_rps": len(ok) / wall, "wall_s": wall, "completed": len(ok), "errors": len(outcomes) - len(ok),
        "status_counts": statuses,
        "latency_s": {"mean": statistics.fmean(ok) if ok else None, "p50": percentile(ok, 50),
                      "p95": percentile(ok, 95), "p99": percentile(ok, 99)},
        "batch_size": batches,
    }


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def start_server(model: Path, port: int, output: Path, args, max_batch_size: int) -> subprocess.Popen:
    """`sglang serve` on a loopback port with the sweep's sizes as defaults; returns once /health answers."""
    cmd = [sys.executable, "-m", "sglang_diffusion", "serve", "--model-path", str(model), "--port", str(port),
           "--output-path", str(output), "--max-queue-size", "256", "--log-level", "warning",
           "--max-batch-size", str(max_batch_size), "--batching-delay-ms", str(args.batching_delay_ms)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1"}
    output.mkdir(parents=True, exist_ok=True)
    log = open(output.parent / f"server-{port}.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}; see {log.name}")
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"the server did not start in 600 s; see {log.name}")


def sweep(args) -> dict:
    """Per preset: a batching-off and a batching-on server, every concurrency level on each,
    alternating off/on, `rounds` times."""
    from sglang_diffusion.distributed.launch import free_port
    from sglang_diffusion.testing import TINY_SAMPLING, cached_model

    runs, servers_info, load = [], {}, {"start": load_average()}
    root = Path(tempfile.mkdtemp(prefix="serving-sweep-"))
    for preset in args.presets:
        model = cached_model(args.family, preset)
        sizes = dict(TINY_SAMPLING.get(args.family, {}), **args.sizes.get(preset, {}))
        args.size, args.steps = f"{sizes['width']}x{sizes['height']}", args.steps_by_preset.get(preset, args.steps)
        servers = {}
        try:
            for name, size in (("off", 1), ("on", args.max_batch_size)):
                port = free_port()
                servers[name] = (start_server(model, port, root / f"{preset}-{name}" / "out", args, size), port)
                info = requests.get(f"http://127.0.0.1:{port}/model_info", timeout=30).json()
                servers_info[f"{preset}-{name}"] = info
            for concurrency in args.concurrency_levels:
                for round_ in range(args.rounds):
                    for name, (_, port) in servers.items():
                        args.url, args.concurrency = f"http://127.0.0.1:{port}", concurrency
                        args.num_requests = max(args.min_requests, args.requests_per_concurrency * concurrency)
                        result = run(args)
                        runs.append({"preset": preset, "batching": name, "concurrency": concurrency, "round": round_,
                                     "num_requests": args.num_requests, "size": args.size, "steps": args.steps,
                                     "load_average": load_average(), **result})
                        r = result
                        print(f"{preset} batching {name} c{concurrency} round {round_}: {r['throughput_rps']:.2f} "
                              f"req/s, p50 {r['latency_s']['p50']:.2f} s, mean batch {r['batch_size']['mean']}, "
                              f"errors {r['errors']}", flush=True)
        finally:
            for proc, _ in servers.values():
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
    load["end"] = load_average()
    return {"runs": runs, "summary": summarize(runs), "servers": servers_info, "load_average": load}


def summarize(runs: list[dict]) -> list[dict]:
    """Per preset and concurrency: median throughput and p50 latency off and on, and the gain."""
    out = []
    for preset in dict.fromkeys(r["preset"] for r in runs):
        for concurrency in dict.fromkeys(r["concurrency"] for r in runs):
            row: dict = {"preset": preset, "concurrency": concurrency}
            for name in ("off", "on"):
                mine = [r for r in runs
                        if (r["preset"], r["concurrency"], r["batching"]) == (preset, concurrency, name)]
                row[f"throughput_rps_{name}"] = statistics.median(r["throughput_rps"] for r in mine)
                row[f"latency_p50_s_{name}"] = statistics.median(r["latency_s"]["p50"] for r in mine)
                row[f"mean_batch_size_{name}"] = statistics.median(r["batch_size"]["mean"] or 0 for r in mine)
            row["throughput_gain"] = row["throughput_rps_on"] / row["throughput_rps_off"]
            out.append(row)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweep", action="store_true", help="Start the servers: batching off and on, per preset.")
    parser.add_argument("--family", default="flux.1", help="Sweep: the tiny-model factory family (an image model).")
    parser.add_argument("--presets", type=lambda v: v.split(","), default=["tiny", "small"])
    parser.add_argument("--concurrency-levels", type=lambda v: [int(c) for c in v.split(",")], default=[1, 4, 16])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--batching-delay-ms", type=float, default=50)
    parser.add_argument("--requests-per-concurrency", type=int, default=2)
    parser.add_argument("--min-requests", type=int, default=8)
    parser.add_argument("--small-size", default="128x128", help="Sweep: the small preset's image size.")
    parser.add_argument("--threads", type=int, default=1, help="Sweep: OMP threads of each server.")
    parser.add_argument("--url", default="http://127.0.0.1:30010")
    parser.add_argument("--num-requests", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--kind", choices=("image", "video"), default="image")
    parser.add_argument("--size", default="32x32")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--num-frames", type=int, default=5)
    parser.add_argument("--api-key")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--label", default="", help="Free text saved with the result (e.g. the server's flags).")
    args = parser.parse_args()
    if args.sweep:
        width, height = (int(v) for v in args.small_size.lower().split("x"))
        args.sizes, args.steps_by_preset = {"small": {"width": width, "height": height}}, {}
        result = {"benchmark": "serving-batching", "machine": machine_info(), "label": args.label,
                  "params": {k: getattr(args, k) for k in ("family", "presets", "concurrency_levels", "rounds",
                                                            "max_batch_size", "batching_delay_ms", "kind", "steps",
                                                            "small_size", "threads", "requests_per_concurrency",
                                                            "min_requests")}}
        result.update(sweep(args))
        RESULTS.mkdir(exist_ok=True)
        stamp = result["machine"]["timestamp"].replace(":", "").replace("+0000", "Z")
        path = RESULTS / f"serving-batching-{args.family}-cpu-{stamp}.json"
        path.write_text(json.dumps(result, indent=2) + "\n")
        for row in result["summary"]:
            print(f"{row['preset']} c{row['concurrency']}: {row['throughput_rps_off']:.2f} -> "
                  f"{row['throughput_rps_on']:.2f} req/s ({row['throughput_gain']:.2f}x), mean batch "
                  f"{row['mean_batch_size_on']:.1f}")
        print(path)
        return
    model_info = requests.get(f"{args.url}/model_info", timeout=30).json()
    result = {"benchmark": "serving", "machine": machine_info(), "server": model_info, "label": args.label,
              "params": {k: getattr(args, k) for k in ("num_requests", "concurrency", "kind", "size", "steps",
                                                        "num_frames")},
              "results": run(args)}
    RESULTS.mkdir(exist_ok=True)
    stamp = result["machine"]["timestamp"].replace(":", "").replace("+0000", "Z")
    path = RESULTS / f"serving-{model_info.get('family') or 'model'}-c{args.concurrency}-{stamp}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    r = result["results"]
    print(f"{path.name}: {r['throughput_rps']:.2f} req/s, p50 {r['latency_s']['p50']}, "
          f"p95 {r['latency_s']['p95']}, p99 {r['latency_s']['p99']}, errors {r['errors']} {r['status_counts']}")


if __name__ == "__main__":
    main()
