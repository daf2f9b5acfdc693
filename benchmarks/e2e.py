"""End to end: a native pipeline (Wan, Qwen-Image, ...) against diffusers' on the same model, alternating.

    python benchmarks/e2e.py [--family wan2.1-t2v] [--preset small] [--height 384 --width 512
        --num-frames 9 --steps 10 --guidance-scale 5] [--repeats 2] [--ablations] [--compile]
    python benchmarks/e2e.py --family qwen-image --true-cfg-scale 4 --negative-prompt blurry
    python benchmarks/e2e.py --family hunyuanvideo --guidance-scale 6   (embedded guidance: one pass a step)

Each measurement runs in a fresh process (so peak memory is its own), which builds the pipeline
through the engine's loader (`--backend sglang` or `diffusers`), runs one 1-step warm-up of the
same shape (one-time costs: kernel primitives, attention tuning), then the timed request. The
backends alternate, native first on odd repeats, diffusers first on even ones. Wall time and
process CPU time are both recorded: on a shared machine the CPU time is the steadier of the two.

`--precision bf16` runs both backends with the DiT in bf16 (the same component dtypes on both
sides: diffusers loads its transformer with torch_dtype=bf16, keeping its fp32 modules, as a
user would run it); on a CPU that runs bf16 slowly (measured: sglang_diffusion/precision.py)
it stops with the measured rates instead, since both would run fp32.

`--ablations` adds, per optimisation of the native path, the DiT forward (or VAE decode) with
that optimisation turned off, against the full native path and diffusers' module on the same
inputs: the first self-attention shared by the CFG branches, cross-attention K/V once per
request, zero-padded text folded, cached RoPE tables, fused norm/modulation/QK-norm/RoPE ops
(and tanh-GELU), the CFG layout, the VAE's CPU fast paths (oneDNN Conv3d, the
channel RMS norm), and (with `--compile`) torch.compile of the DiT blocks.

Writes one JSON file to benchmarks/results/: per-stage times, totals (median, p20, p80), peak
memory, the diffusers / native ratio, the ablations, and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info  # noqa: E402 (after the path it is found on)

RESULTS = Path(__file__).resolve().parent / "results"
PROMPT = "A cat walks on the grass, realistic style, gentle camera movement"


def quantiles(samples: list[float]) -> dict:
    ordered = sorted(samples)

    def q(p):
        return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]

    return {"median": statistics.median(ordered), "p20": q(20), "p80": q(80), "n": len(ordered)}


# ---- one measurement (child process) -----------------------------------------------------------


def measure(args) -> dict:
    import torch

    from sglang_diffusion.config.families import FAMILIES
    from sglang_diffusion.config.sampling_params import SamplingParams
    from sglang_diffusion.config.server_args import ServerArgs
    from sglang_diffusion.pipelines.registry import build_pipeline
    from sglang_diffusion.platform import Platform
    from sglang_diffusion.testing import cached_model

    model = cached_model(args.family, args.preset)
    start = time.perf_counter()
    pipe = build_pipeline(ServerArgs(model_path=str(model), backend=args.backend, dit_precision=args.precision,
                                     enable_torch_compile=args.compile and args.backend == "sglang"),
                          Platform.current())
    load_s = time.perf_counter() - start
    request = dict(prompt=PROMPT, negative_prompt=args.negative_prompt, height=args.height, width=args.width,
                   guidance_scale=args.guidance_scale, seed=0, save_output=False)
    if FAMILIES[args.family].is_video:  # image families make one frame and take no num_frames
        request["num_frames"] = args.num_frames
    if args.true_cfg_scale is not None:
        request["true_cfg_scale"] = args.true_cfg_scale
    # warm-up, same shapes; 2 steps: a flow scheduler with shift_terminal (Qwen-Image) cannot run 1
    pipe.generate(SamplingParams(**request, num_inference_steps=min(2, args.steps)))
    wall, cpu = time.perf_counter(), time.process_time()
    out = pipe.generate(SamplingParams(**request, num_inference_steps=args.steps))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"backend": args.backend, "pipeline": pipe.describe(), "load_s": load_s, "total_s": wall, "cpu_s": cpu,
            "stages_s": out.timings, "frames": list(out.frames.shape),
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "threads": torch.get_num_threads()}


# ---- ablations (child process) -------------------------------------------------------------------


def _timed(fn, repeats: int = 3) -> dict:
    fn()  # warm-up
    walls, cpus = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return {"wall_s": statistics.median(walls), "cpu_s": statistics.median(cpus)}


def _timed_round_robin(rows: dict, rounds: int = 3) -> dict:
    """Each row warmed up, then timed once per round, rows interleaved: a change in the machine's
    load spreads over all rows instead of skewing the ones measured during it."""
    for fn in rows.values():
        fn()
    samples = {name: ([], []) for name in rows}
    for _ in range(rounds):
        for name, fn in rows.items():
            w, c = time.perf_counter(), time.process_time()
            fn()
            samples[name][0].append(time.perf_counter() - w)
            samples[name][1].append(time.process_time() - c)
    return {name: {"wall_s": statistics.median(w), "cpu_s": statistics.median(c)} for name, (w, c) in samples.items()}


def ablations(args) -> dict:
    import torch
    from diffusers import AutoencoderKLWan
    from diffusers import WanTransformer3DModel as DiffusersWan

    import sglang_diffusion.layers.adanorm as adanorm
    import sglang_diffusion.layers.mlp as mlp
    import sglang_diffusion.models.dits.wan as wan
    from sglang_diffusion.layers.conv import use_onednn_conv3d
    from sglang_diffusion.models.dits.wan import WanContext, WanTransformer3DModel
    from sglang_diffusion.models.vaes.wan import accelerate_wan_vae
    from sglang_diffusion.ops import activation, norm, qk_norm, rope
    from sglang_diffusion.testing import cached_model

    folder = cached_model(args.family, args.preset)
    ours = WanTransformer3DModel.from_pretrained(folder / "transformer")
    ref = DiffusersWan.from_pretrained(folder / "transformer").eval()
    cfg, vae_cfg = ours.config, json.loads((folder / "vae" / "config.json").read_text())
    g = torch.Generator().manual_seed(0)
    frames = (args.num_frames - 1) // 4 + 1
    x = torch.randn(1, cfg.in_channels, frames, args.height // 8, args.width // 8, generator=g)
    text = torch.zeros(2, 512, cfg.text_dim)
    text[0, :24] = torch.randn(24, cfg.text_dim, generator=g)  # a 24-token prompt
    text[1, :2] = torch.randn(2, cfg.text_dim, generator=g)  # an empty negative prompt: EOS + 1
    t = torch.tensor([500.0])
    tokens = frames * (args.height // 16) * (args.width // 16)
    out: dict = {"shape": {"latents": list(x.shape), "video_tokens": tokens, "text_tokens": 512}}

    with torch.inference_mode():
        cond, uncond = ours.encode_context(text[:1]), ours.encode_context(text[1:])

        def cfg_step(model_call):
            return lambda: (model_call(text[:1], cond), model_call(text[1:], uncond))

        def native():
            return ours.forward_branches(x, t, [cond, uncond])

        rows = {"diffusers": cfg_step(lambda ehs, ctx: ref(x, t, ehs, return_dict=False)), "native": native}
        rows["native, first self-attention run per branch"] = cfg_step(lambda ehs, ctx: ours(x, t, context=ctx))
        rows["native, K/V of the text every step"] = lambda: ours.forward_branches(
            x, t, [ours.encode_context(text[:1]), ours.encode_context(text[1:])])

        def unfolded():
            WanTransformer3DModel.fold_text_padding = False
            c, u = ours.encode_context(text[:1]), ours.encode_context(text[1:])
            WanTransformer3DModel.fold_text_padding = True
            return lambda: ours.forward_branches(x, t, [c, u])

        rows["native, padded text not folded"] = unfolded()

        def rope_rebuilt():
            ours.rope._tables.clear()
            native()

        rows["native, RoPE tables rebuilt every step"] = rope_rebuilt
        both = WanContext.cat([cond, uncond])
        rows["native, CFG batched (batch 2 after the shared self-attention)"] = lambda: ours.forward_branches(
            x, t, [cond, uncond], joined=both)
        # the fused kernels, and the plain-torch references they replace, as (module, name, reference)
        swaps = [(adanorm, "norm_modulate", norm.norm_modulate_reference),
                 (adanorm, "gated_residual_norm_modulate", norm.gated_residual_norm_modulate_reference),
                 (wan, "qk_rms_norm", qk_norm.qk_rms_norm_reference), (wan, "apply_rope", rope.apply_rope_reference),
                 (mlp, "gelu_tanh", lambda x, inplace=False: activation.gelu_tanh_reference(x))]

        def with_references(names):
            def run():
                kept = [(module, name, getattr(module, name)) for module, name, _ in swaps if name in names]
                for module, name, reference in swaps:
                    if name in names:
                        setattr(module, name, reference)
                try:
                    native()
                finally:
                    for module, name, kernel in kept:
                        setattr(module, name, kernel)
            return run

        rows["native, unfused norm/modulation/QK-norm/RoPE (torch references)"] = with_references(
            {"norm_modulate", "gated_residual_norm_modulate", "qk_rms_norm", "apply_rope"})
        rows["native, tanh-GELU by F.gelu"] = with_references({"gelu_tanh"})
        results = _timed_round_robin(rows)

        if args.compile:
            for block in ours.blocks:
                block.compile()
            start = time.perf_counter()
            native()
            out["compile_s"] = time.perf_counter() - start
            results["native + torch.compile of the blocks"] = _timed(native)

        # VAE decode: as diffusers runs it, with oneDNN Conv3d, with both CPU fast paths
        vaes = [AutoencoderKLWan.from_pretrained(folder / "vae").eval() for _ in range(3)]
        use_onednn_conv3d(vaes[1])
        accelerate_wan_vae(vaes[2])
        z = torch.randn(1, vae_cfg["z_dim"], frames, args.height // 8, args.width // 8, generator=g)
        decode = _timed_round_robin({
            "VAE decode, as diffusers runs it": lambda: vaes[0].decode(z),
            "VAE decode, oneDNN Conv3d": lambda: vaes[1].decode(z),
            "VAE decode, native CPU paths (channels-last oneDNN Conv3d padding inside, fused channel RMS norm)":
                lambda: vaes[2].decode(z),
        }, rounds=2)

    base = results["native"]["cpu_s"]
    out["dit_cfg_step"] = {name: {**r, "cpu_vs_native": r["cpu_s"] / base} for name, r in results.items()}
    out["vae_decode"] = decode
    return out


# ---- driver ----------------------------------------------------------------------------------------


def child(mode: str, args, backend: str | None = None) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--family", args.family, "--preset", args.preset,
           "--height", str(args.height), "--width", str(args.width), "--num-frames", str(args.num_frames),
           "--steps", str(args.steps), "--guidance-scale", str(args.guidance_scale), "--precision", args.precision]
    if args.negative_prompt is not None:
        cmd += ["--negative-prompt", args.negative_prompt]
    if args.true_cfg_scale is not None:
        cmd += ["--true-cfg-scale", str(args.true_cfg_scale)]
    if backend:
        cmd += ["--backend", backend]
    if args.compile:
        cmd.append("--compile")
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{mode} {backend or ''} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", default="wan2.1-t2v")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--height", type=int, default=384)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--num-frames", type=int, default=9)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--guidance-scale", type=float, default=5.0)
    parser.add_argument("--negative-prompt", help="(true CFG of FLUX.1 / Qwen-Image runs only with one)")
    parser.add_argument("--true-cfg-scale", type=float, help="the CFG scale of FLUX.1 / Qwen-Image")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                        help="the DiT's precision, on both backends")
    parser.add_argument("--ablations", action="store_true")
    parser.add_argument("--compile", action="store_true", help="also torch.compile the native DiT blocks")
    parser.add_argument("--child", choices=("measure", "ablations"), help=argparse.SUPPRESS)
    parser.add_argument("--backend", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print(json.dumps(measure(args) if args.child == "measure" else ablations(args)))
        return

    import torch

    from sglang_diffusion import precision
    from sglang_diffusion.testing import cached_model

    if args.precision != "fp32" and not torch.cuda.is_available():
        chosen, reason = precision.choose(args.precision, precision.cpu_rates())
        if chosen != args.precision:
            raise SystemExit(f"--precision {args.precision}: this CPU would run both backends in fp32 ({reason})")
    cached_model(args.family, args.preset)  # built once, before anything is timed
    runs: dict[str, list] = {"sglang": [], "diffusers": []}
    for i in range(args.repeats):
        for backend in (("sglang", "diffusers") if i % 2 == 0 else ("diffusers", "sglang")):
            runs[backend].append(child("measure", args, backend))
            r = runs[backend][-1]
            print(f"[{i + 1}/{args.repeats}] {backend:9s} total {r['total_s']:.1f} s (cpu {r['cpu_s']:.1f} s), "
                  f"stages {', '.join(f'{k} {v:.1f}' for k, v in r['stages_s'].items())}", file=sys.stderr)
    summary = {}
    for backend, rs in runs.items():
        stages = sorted({k for r in rs for k in r["stages_s"]})
        summary[backend] = {"total_s": quantiles([r["total_s"] for r in rs]),
                            "cpu_s": quantiles([r["cpu_s"] for r in rs]),
                            "stages_s": {k: statistics.median([r["stages_s"].get(k, 0.0) for r in rs])
                                         for k in stages},
                            "peak_rss_gib": max(r["peak_rss_gib"] for r in rs),
                            "load_s": statistics.median([r["load_s"] for r in rs])}
    ratio = summary["diffusers"]["total_s"]["median"] / summary["sglang"]["total_s"]["median"]
    cpu_ratio = summary["diffusers"]["cpu_s"]["median"] / summary["sglang"]["cpu_s"]["median"]
    result = {"benchmark": "e2e", "family": args.family, "preset": args.preset, "precision": args.precision,
              "request": {"height": args.height, "width": args.width, "num_frames": args.num_frames,
                          "steps": args.steps, "guidance_scale": args.guidance_scale, "prompt": PROMPT,
                          "negative_prompt": args.negative_prompt, "true_cfg_scale": args.true_cfg_scale},
              "native_torch_compile": args.compile, "speedup_wall": ratio, "speedup_cpu": cpu_ratio,
              "summary": summary, "runs": runs, "machine": machine_info(),
              "load_average": os.getloadavg()}
    if args.ablations:
        result["ablations"] = child("ablations", args)
    print(f"native vs diffusers: {ratio:.2f}x wall, {cpu_ratio:.2f}x CPU time", file=sys.stderr)
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    cpu = "gpu" if result["machine"]["gpu"] else "cpu"
    tag = "" if args.precision == "fp32" else f"-{args.precision}"
    path = RESULTS / f"e2e-{args.family}-{args.preset}{tag}-{cpu}-{stamp}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(path)


if __name__ == "__main__":
    main()
