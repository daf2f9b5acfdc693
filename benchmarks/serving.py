"""Load test of a running `sglang serve`: N requests at a given concurrency.

    python benchmarks/serving.py --url http://127.0.0.1:30010 --num-requests 32 --concurrency 4 \
        [--kind image|video] [--size 32x32] [--steps 2] [--num-frames 5] [--api-key KEY]

Each request is timed from send to answer (an image) or to completion (a video job, polled).
Writes one JSON file to benchmarks/results/: throughput, latency p50/p95/p99, errors by status,
the server's /model_info, and the machine it ran on (server and client on the same machine).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
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


def run(args) -> dict:
    session = requests.Session()
    if args.api_key:
        session.headers["Authorization"] = f"Bearer {args.api_key}"
    send = image_request if args.kind == "image" else video_request
    send(args, session, -1)  # warm-up, not counted

    def timed(i: int) -> tuple[int, float]:
        start = time.perf_counter()
        status = send(args, session, i)
        return status, time.perf_counter() - start

    start = time.perf_counter()
    with ThreadPoolExecutor(args.concurrency) as pool:
        outcomes = list(pool.map(timed, range(args.num_requests)))
    wall = time.perf_counter() - start
    ok = [seconds for status, seconds in outcomes if status == 200]
    statuses: dict[str, int] = {}
    for status, _ in outcomes:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    return {
        "throughput_rps": len(ok) / wall, "wall_s": wall, "completed": len(ok), "errors": len(outcomes) - len(ok),
        "status_counts": statuses,
        "latency_s": {"mean": statistics.fmean(ok) if ok else None, "p50": percentile(ok, 50),
                      "p95": percentile(ok, 95), "p99": percentile(ok, 99)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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
