"""Benchmark: time per denoising step of the native Wan pipeline at 1, 2 and 4 ranks, with the share
of it spent in communication, and what that predicts for 4 and 8 GPUs on NVLink.

    python benchmarks/parallel.py [--preset small --height 256 --width 256 --num-frames 17 --steps 4]

Each layout runs in its own set of rank processes (gloo on a CPU, NCCL on GPUs), one warm-up
request then a timed one. In each rank the collectives are wrapped: the time spent inside them
(and inside the waits of the ring's point-to-point transfers) is the communication that is not
hidden behind compute, and the bytes they move are counted. Per step: median, p20 and p80 of
the wall time between steps, the exposed communication time, and the bytes each rank sends.

On a CPU the ranks share its cores, so the numbers show overhead, not speed-up. The prediction
(`predict_nvlink`, written to the JSON with every term) scales the measured bytes per step to a
full-size model by the formula they follow and sets them against NVLink bandwidth and the
model's FLOPs on the GPU.

Writes one JSON file to benchmarks/results/ naming the machine, versions, commit and shapes.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# name -> (num_gpus, ulysses, ring, cfg)
LAYOUTS = {
    "1 rank": (1, 1, 1, 1),
    "2 ranks: ulysses 2": (2, 2, 1, 1),
    "2 ranks: ring 2": (2, 1, 2, 1),
    "2 ranks: cfg 2": (2, 1, 1, 2),
    "4 ranks: ulysses 4": (4, 4, 1, 1),
    "4 ranks: ulysses 2 x ring 2": (4, 2, 2, 1),
    "4 ranks: ulysses 2 x cfg 2": (4, 2, 1, 2),
}


# ---- inside a rank ---------------------------------------------------------------------------


class CommMeter:
    """Wraps torch.distributed's collectives: seconds spent in them and bytes this rank sends."""

    def __init__(self):
        import torch.distributed as dist

        self.seconds, self.bytes, self.calls = 0.0, 0, 0
        self._dist = dist
        for name, sent in (("all_to_all_single", self._a2a_bytes), ("all_gather", self._gather_bytes),
                           ("all_reduce", self._reduce_bytes)):
            setattr(dist, name, self._timed(getattr(dist, name), sent))
        original_batch = dist.batch_isend_irecv

        def batch_isend_irecv(ops):
            self.bytes += sum(_nbytes(op.tensor) for op in ops if op.op is dist.isend)
            return [_TimedWork(w, self) for w in self._clock(original_batch, ops)]

        dist.batch_isend_irecv = batch_isend_irecv

    def _clock(self, fn, *args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start
            self.calls += 1

    def _timed(self, fn, sent):
        def wrapper(*args, **kwargs):
            self.bytes += sent(*args, **kwargs)
            return self._clock(fn, *args, **kwargs)
        return wrapper

    def _size(self, kwargs) -> int:
        return self._dist.get_world_size(kwargs.get("group"))

    def _a2a_bytes(self, out, inp, *args, **kwargs) -> int:
        p = self._size(kwargs)
        return _nbytes(inp) * (p - 1) // p  # the chunk for itself stays

    def _gather_bytes(self, parts, local, *args, **kwargs) -> int:
        return _nbytes(local) * (self._size(kwargs) - 1)

    def _reduce_bytes(self, t, *args, **kwargs) -> int:
        p = self._size(kwargs)
        return 2 * _nbytes(t) * (p - 1) // p  # ring all-reduce: reduce-scatter + all-gather

    def snapshot(self) -> tuple[float, int]:
        return self.seconds, self.bytes


class _TimedWork:
    def __init__(self, work, meter: CommMeter):
        self._work, self._meter = work, meter

    def wait(self):
        return self._meter._clock(self._work.wait)


def _nbytes(t) -> int:
    return t.numel() * t.element_size()


def rank_main(rank, world, addr, model_path, layout, request, results):
    import torch

    from sglang_diffusion.config.sampling_params import SamplingParams
    from sglang_diffusion.config.server_args import ServerArgs
    from sglang_diffusion.distributed.parallel_state import init_world
    from sglang_diffusion.pipelines.hooks import StepHooks
    from sglang_diffusion.pipelines.registry import build_pipeline
    from sglang_diffusion.platform import Platform

    platform = Platform.current(rank)
    if platform.device.type == "cuda":
        torch.cuda.set_device(platform.device)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    init_world(rank, world, addr, platform.dist_backend)
    meter = CommMeter()
    n, ulysses, ring, cfg = layout
    args = ServerArgs(model_path=model_path, backend="sglang", num_gpus=n, ulysses_degree=ulysses,
                      ring_degree=ring, enable_cfg_parallel=cfg == 2)
    pipe = build_pipeline(args, platform)
    params = SamplingParams(**request)
    pipe.run(params)  # warm-up: first-call costs, the CFG layout's choice
    marks = []

    def mark(done, total):
        if platform.device.type == "cuda":
            torch.cuda.synchronize()
        marks.append((time.perf_counter(), *meter.snapshot()))

    start = (time.perf_counter(), *meter.snapshot())
    state = pipe.run(params, StepHooks(on_progress=mark))
    steps = [(t1 - t0, c1 - c0, b1 - b0) for (t0, c0, b0), (t1, c1, b1) in zip([start, *marks], marks)]
    results.put((rank, steps, state.timings))


def run_layout(name, layout, model_path, request) -> dict:
    from sglang_diffusion.distributed.launch import free_port

    world = layout[0]
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    addr = f"127.0.0.1:{free_port()}"
    procs = [ctx.Process(target=rank_main, args=(r, world, addr, model_path, layout, request, results))
             for r in range(world)]
    for p in procs:
        p.start()
    per_rank = {}
    try:
        while len(per_rank) < world:
            rank, steps, timings = results.get(timeout=1800)
            per_rank[rank] = (steps, timings)
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    # a step lasts as long as its slowest rank; its communication as rank 0 saw it
    walls = [max(per_rank[r][0][i][0] for r in per_rank) for i in range(len(per_rank[0][0]))]
    comm = [per_rank[0][0][i][1] for i in range(len(walls))]
    sent = [per_rank[0][0][i][2] for i in range(len(walls))]
    q = statistics.quantiles(walls, n=5) if len(walls) > 1 else [walls[0]] * 4
    return {"layout": name, "num_gpus": world, "ulysses": layout[1], "ring": layout[2], "cfg": layout[3],
            "step_ms": {"median": 1e3 * statistics.median(walls), "p20": 1e3 * q[0], "p80": 1e3 * q[3]},
            "comm_ms_per_step": 1e3 * statistics.median(comm),
            "comm_share": statistics.median(c / w for c, w in zip(comm, walls)),
            "bytes_sent_per_step_per_rank": int(statistics.median(sent)),
            "stage_seconds_rank0": per_rank[0][1]}


# ---- the NVLink prediction -------------------------------------------------------------------


def ulysses_bytes_per_step(tokens, dim, layers, sp, ulysses, bytes_per_elem, batch=1) -> float:
    """Bytes one rank sends per DiT forward under Ulysses: per layer, q, k, v out and the output
    back, each [batch, tokens / sp, dim], of which (U - 1) / U leaves the rank."""
    return layers * 4 * batch * tokens / sp * dim * bytes_per_elem * (ulysses - 1) / ulysses


def ring_bytes_per_step(tokens, dim, layers, sp, ring, bytes_per_elem, batch=1) -> float:
    """Bytes one rank sends per DiT forward under ring attention: per layer, its K and V block
    ([batch, tokens / sp * U, dim / U]) passed on ring - 1 times."""
    return layers * 2 * batch * tokens / sp * dim * bytes_per_elem * (ring - 1)


def dit_flops(tokens, dim, ffn, layers, text_tokens=512, batch=1) -> float:
    """FLOPs of one DiT forward: the linears (q, k, v, o; cross-attention q, o; FFN) and the
    attention matmuls (self: 4 S^2 D, cross: 4 S L D) per layer."""
    linear = 2 * tokens * (6 * dim * dim + 2 * dim * ffn)
    attention = 4 * tokens * tokens * dim + 4 * tokens * text_tokens * dim
    return batch * layers * (linear + attention)


def predict_nvlink(measured: list[dict], small: dict) -> dict:
    """4- and 8-GPU efficiency of Ulysses on NVLink for full-size Wan models, from the bytes the
    CPU run moved per step (which checks the volume formula) and stated GPU rates."""
    nvlink_bytes_s = 450e9 * 0.7  # H100 SXM NVLink 4: 450 GB/s per direction; ~70% achieved by all-to-all
    gpu_flops_s = 989e12 * 0.5  # H100 dense bf16 peak; ~50% achieved by a DiT forward
    check = []
    for m in measured:
        if m["num_gpus"] == 1 or m["cfg"] != 1:
            continue
        sp = m["ulysses"] * m["ring"]
        # CFG: two forwards of batch 1 or one of batch 2, the same bytes either way (fp32 here)
        want = (ulysses_bytes_per_step(small["tokens"], small["dim"], small["layers"], sp, m["ulysses"], 4, batch=2)
                + ring_bytes_per_step(small["tokens"], small["dim"], small["layers"], sp, m["ring"], 4, batch=2))
        check.append({"layout": m["layout"], "measured_bytes": m["bytes_sent_per_step_per_rank"],
                      "formula_bytes": int(want),
                      "ratio": m["bytes_sent_per_step_per_rank"] / want if want else None})
    models = {  # (tokens at the resolution, dim, ffn, layers)
        "Wan2.1-T2V-1.3B 480p 81 frames": (21 * 30 * 52, 1536, 8960, 30),
        "Wan2.1-T2V-14B 720p 81 frames": (21 * 45 * 80, 5120, 13824, 40),
    }
    out = {"assumptions": {"nvlink_bytes_per_s_per_direction_achieved": nvlink_bytes_s,
                           "gpu_flops_per_s_achieved": gpu_flops_s, "dtype_bytes": 2, "cfg_batch": 2,
                           "communication_not_overlapped": True},
           "volume_check": check, "models": {}}
    for model, (tokens, dim, ffn, layers) in models.items():
        rows = {}
        for gpus in (4, 8):
            compute_s = dit_flops(tokens, dim, ffn, layers, batch=2) / gpus / gpu_flops_s
            comm_bytes = ulysses_bytes_per_step(tokens, dim, layers, gpus, gpus, 2, batch=2)
            comm_s = comm_bytes / nvlink_bytes_s
            rows[f"{gpus} GPUs ulysses {gpus}"] = {
                "compute_s_per_step": compute_s, "bytes_per_rank_per_step": comm_bytes,
                "comm_s_per_step": comm_s, "efficiency": compute_s / (compute_s + comm_s)}
        out["models"][model] = rows
    return out


# ---- main ------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small", choices=("tiny", "small", "full"))
    parser.add_argument("--family", default="wan2.1-t2v")
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--num-frames", type=int, default=17)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--layouts", nargs="*", default=list(LAYOUTS), choices=list(LAYOUTS))
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    opts = parser.parse_args()

    from benchmarks.machine import machine_info
    from sglang_diffusion.testing import cached_model, model_configs

    model_path = str(cached_model(opts.family, opts.preset))
    config = model_configs(opts.family, opts.preset)["transformer"]
    dim = config["num_attention_heads"] * config["attention_head_dim"]
    tokens = ((opts.num_frames - 1) // 4 + 1) * (opts.height // 16) * (opts.width // 16)
    request = dict(prompt="a red fox running through fresh snow", negative_prompt="blurry", height=opts.height,
                   width=opts.width, num_frames=opts.num_frames, num_inference_steps=opts.steps, guidance_scale=5.0,
                   seed=0, save_output=False)
    measured = []
    for name in opts.layouts:
        row = run_layout(name, LAYOUTS[name], model_path, request)
        measured.append(row)
        print(f"{name:30s} step {row['step_ms']['median']:8.1f} ms (p20 {row['step_ms']['p20']:.1f}, "
              f"p80 {row['step_ms']['p80']:.1f}); communication {row['comm_ms_per_step']:7.1f} ms "
              f"({100 * row['comm_share']:.0f}%), {row['bytes_sent_per_step_per_rank'] / 2**20:.1f} MiB sent per rank",
              flush=True)
    small = {"tokens": tokens, "dim": dim, "layers": config["num_layers"]}
    result = {"benchmark": "parallel", "machine": machine_info(), "model": f"{opts.family} ({opts.preset})",
              "transformer": config, "request": request, "video_tokens": tokens, "results": measured,
              "prediction": predict_nvlink(measured, small)}
    for model, rows in result["prediction"]["models"].items():
        for layout, r in rows.items():
            print(f"predicted {model}, {layout}: compute {r['compute_s_per_step'] * 1e3:.0f} ms, all-to-all "
                  f"{r['comm_s_per_step'] * 1e3:.0f} ms per step -> efficiency {100 * r['efficiency']:.1f}%")
    opts.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    device = "cuda" if result["machine"]["gpu"] else "cpu"
    path = opts.out / f"parallel-{opts.family}-{opts.preset}-{device}-{stamp}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
