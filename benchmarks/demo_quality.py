"""The demo model's quality: a fixed set of prompts, each output judged by the demo checker.

    python benchmarks/demo_quality.py [--backend sglang|diffusers] [--setting exact|teacache-3.0|...]
        [--num-prompts 120] [--held-out 45]

The prompts are videos (128x128, 17 frames, the demo's default sampling), a fixed draw of the
scenes: `--held-out` of them from the combinations never shown in training (world.held_out),
the rest from training ones; prompt i uses seed i. Each output goes through
`sglang_diffusion.demo.check.judge`, and the accuracy of each property (background colour,
object colour, shape, motion direction, object in frame) is reported overall and for the
held-out and training prompts apart, against the issue's targets. `--setting` takes the cache
settings of benchmarks/cache.py (native step caching on the sglang backend). The time of each
generation (wall and process CPU) is recorded, and the whole `sglang generate` process of the
README's first command is timed once.

Writes one JSON file to benchmarks/results/ with the machine, the load, every verdict.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cache import SETTINGS  # noqa: E402 (after the path it is found on)
from machine import machine_info  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TARGETS = {"background": 0.95, "colour": 0.95, "shape": 0.85, "motion": 0.90, "in_frame": 0.95}
README_PROMPT = "a red circle moving right on a blue background"


def prompt_set(num_prompts: int, held_out: int) -> list[tuple[str, bool]]:
    from sglang_diffusion.demo import world

    rng = np.random.default_rng(0)
    held = [world.held_out_scenes()[i] for i in rng.permutation(len(world.held_out_scenes()))[:held_out]]
    train = [world.training_scenes()[i] for i in rng.permutation(len(world.training_scenes()))[:num_prompts - held_out]]
    return [(s.prompt(), True) for s in held] + [(s.prompt(), False) for s in train]


def accuracy(records: list[dict]) -> dict[str, float]:
    return {k: float(np.mean([r["correct"][k] for r in records])) for k in TARGETS if records}


def whole_process_seconds(model_path: str, sampling: dict, tmp: Path) -> float:
    """`sglang generate --prompt ...` on the model at the demo's sizes, start to exit."""
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in sampling.items()]
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "sglang_diffusion", "generate", "--prompt", README_PROMPT,
                    "--model-path", model_path, *flags, "--output-path", str(tmp)], check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="sglang", choices=("sglang", "diffusers"))
    parser.add_argument("--setting", default="exact", help=f"a cache setting: {', '.join(SETTINGS)}")
    parser.add_argument("--num-prompts", type=int, default=120)
    parser.add_argument("--held-out", type=int, default=45)
    parser.add_argument("--model-path", default=None, help="a demo-model folder (default: the shipped one)")
    parser.add_argument("--label", default=None, help="a word for the result file name")
    args = parser.parse_args()
    if args.setting not in SETTINGS or SETTINGS[args.setting][0] != "sglang" and args.setting != "exact":
        raise SystemExit(f"--setting: one of {', '.join(n for n, s in SETTINGS.items() if s[0] == 'sglang')}")
    import tempfile

    import torch

    from sglang_diffusion.config.cache import CacheDitParams, DBCacheParams
    from sglang_diffusion.config.sampling_params import SamplingParams
    from sglang_diffusion.config.server_args import ServerArgs
    from sglang_diffusion.demo import DEMO_SAMPLING, demo_model
    from sglang_diffusion.demo.check import judge
    from sglang_diffusion.pipelines.registry import build_pipeline
    from sglang_diffusion.platform import Platform

    _, cache, fields = SETTINGS[args.setting]
    model_path = args.model_path or str(demo_model().path)
    server = dict(model_path=model_path, backend=args.backend)
    if cache is not None:
        server.update(enable_cache_dit=True, cache_dit_params=CacheDitParams(DBCacheParams(**cache)))
    load_start = os.getloadavg()
    pipe = build_pipeline(ServerArgs(**server), Platform.current())
    sampling = {k: v for k, v in DEMO_SAMPLING.items() if k != "fps"}
    records = []
    for i, (prompt, held_out) in enumerate(prompt_set(args.num_prompts, args.held_out)):
        wall, cpu = time.perf_counter(), time.process_time()
        out = pipe.generate(SamplingParams(prompt=prompt, seed=i, save_output=False, **sampling, **fields))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        verdict = judge(out.frames[0], prompt)
        records.append(dict(prompt=prompt, seed=i, held_out=held_out, correct=verdict.correct(),
                            found=dict(background=verdict.background, colour=verdict.colour, shape=verdict.shape,
                                       motion=verdict.motion, fill=round(verdict.fill, 3),
                                       taper=round(verdict.taper, 3), travel=[round(t, 1) for t in verdict.travel]),
                            wall_s=wall, cpu_s=cpu))
        print(f"{i + 1}/{args.num_prompts} {'held-out' if held_out else 'train   '} {prompt}: "
              f"{'pass' if verdict.passed else 'FAIL ' + str(verdict.correct())} ({wall:.2f} s)", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        process_s = whole_process_seconds(model_path, DEMO_SAMPLING, Path(tmp))
    overall = accuracy(records)
    result = dict(
        benchmark="demo_quality", model_path=model_path, backend=args.backend, setting=args.setting, cache_dit_params=cache,
        sampling=dict(sampling, **fields), num_prompts=len(records), held_out_prompts=args.held_out,
        accuracy=overall, accuracy_held_out=accuracy([r for r in records if r["held_out"]]),
        accuracy_training=accuracy([r for r in records if not r["held_out"]]),
        all_passed=float(np.mean([all(r["correct"].values()) for r in records])),
        targets=TARGETS, targets_met={k: overall[k] >= v for k, v in TARGETS.items()},
        generation_wall_s=dict(median=statistics.median(r["wall_s"] for r in records),
                               max=max(r["wall_s"] for r in records)),
        generation_cpu_s=dict(median=statistics.median(r["cpu_s"] for r in records)),
        whole_process_s=process_s, threads=torch.get_num_threads(), load_start=load_start,
        load_end=os.getloadavg(), machine=machine_info(), pipeline=pipe.describe(), records=records)
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    name = "-".join(filter(None, ["demo_quality", args.backend, args.setting, args.label, "cpu", stamp]))
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("accuracy", "accuracy_held_out", "targets_met", "generation_wall_s",
                                             "whole_process_s", "load_start", "load_end")}, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
