"""End to end: the native Wan pipeline with sliding tile attention (one fixed window) against
dense attention (fa), same model, prompt and seed, alternating in one process.

    python benchmarks/sliding_tile.py [--family wan2.1-t2v --preset small --height 384 --width 640
        --num-frames 9 --steps 4 --window 1x2x3 --tile 6x8x8 --repeats 2]

Both pipelines are built once and warmed up with a 1-step request of the same shape; then the
timed requests alternate (dense, sta, dense, sta, ...). Reported: the denoising stage's and the
whole request's median time and the speed-up, the window's attention work fraction on this grid
(ops.sliding_tile_attention.computed_fraction), and the PSNR of the STA video against the dense
one (uint8 frames, peak 255). One JSON file in benchmarks/results/.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent / "kernels"))
import harness  # noqa: E402


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="wan2.1-t2v")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--height", type=int, default=384)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--num-frames", type=int, default=9)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--guidance-scale", type=float, default=5.0)
    parser.add_argument("--window", default="1x2x3", help="tiles t x h x w, every step, layer and head")
    parser.add_argument("--tile", default="6x8x8", help="tokens per tile (FastVideo's default for Wan)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out-dir", type=Path, default=harness.REPO / "benchmarks" / "results")
    args = parser.parse_args()

    import torch

    from sglang_diffusion.config.sampling_params import SamplingParams
    from sglang_diffusion.config.server_args import ServerArgs
    from sglang_diffusion.ops.sliding_tile_attention import TileLayout, computed_fraction
    from sglang_diffusion.pipelines.registry import build_pipeline
    from sglang_diffusion.platform import Platform
    from sglang_diffusion.testing import cached_model

    model = cached_model(args.family, args.preset)
    common = dict(model_path=str(model), backend="sglang", dit_precision="fp32", text_encoder_precisions=["fp32"])
    variants = {
        "dense": ServerArgs(**common, attention_backend="fa"),
        "sta": ServerArgs(**common, attention_backend="sliding_tile_attn",
                          attention_backend_config=f"window={args.window},tile_size={args.tile}"),
    }
    pipes = {name: build_pipeline(a, Platform.current()) for name, a in variants.items()}
    request = dict(prompt="a red fox running through fresh snow, forest at dawn", negative_prompt="blurry",
                   height=args.height, width=args.width, num_frames=args.num_frames, guidance_scale=args.guidance_scale,
                   seed=7)
    for pipe in pipes.values():
        pipe.run(SamplingParams(**request, num_inference_steps=1))  # warm-up: one-time costs

    totals = {n: [] for n in pipes}
    denoise = {n: [] for n in pipes}
    frames = {}
    for _ in range(args.repeats):
        for name, pipe in pipes.items():
            start = time.perf_counter()
            state = pipe.run(SamplingParams(**request, num_inference_steps=args.steps))
            totals[name].append(time.perf_counter() - start)
            denoise[name].append(state.timings["denoising"])
            frames[name] = state.frames

    dit = pipes["dense"].stages[-2].experts[0].config
    vae = pipes["dense"].stages[-1].vae.config
    grid = ((args.num_frames - 1) // vae.scale_factor_temporal + 1,
            args.height // vae.scale_factor_spatial // dit.patch_size[1],
            args.width // vae.scale_factor_spatial // dit.patch_size[2])
    layout = TileLayout(grid, tuple(int(n) for n in args.tile.split("x")))
    window = tuple(int(n) for n in args.window.split("x"))
    med = {n: {"total_s": statistics.median(totals[n]), "denoising_s": statistics.median(denoise[n]),
               "totals_s": totals[n], "denoising_all_s": denoise[n]} for n in pipes}
    rec = harness.record(
        "sliding_tile_e2e", torch.device("cpu"), family=args.family, preset=args.preset,
        request={**request, "num_inference_steps": args.steps}, window=list(window), tile=list(layout.tile),
        token_grid=list(grid), tiles=list(layout.tiles), heads=dit.num_attention_heads, layers=dit.num_layers,
        attention_work_fraction=computed_fraction(layout, window, dit.num_attention_heads), results=med,
        speedup_denoising=med["dense"]["denoising_s"] / med["sta"]["denoising_s"],
        speedup_total=med["dense"]["total_s"] / med["sta"]["total_s"], psnr_db_vs_dense=psnr(frames["sta"], frames["dense"]),
        load_avg_1m_end=os.getloadavg()[0],
    )
    path = harness.write(rec, "sliding_tile_e2e", args.out_dir)
    print(f"{args.family} {args.preset}, {args.num_frames}x{args.height}x{args.width}, {args.steps} steps: token grid "
          f"{'x'.join(map(str, grid))} in {'x'.join(map(str, layout.tiles))} tiles of {args.tile}, window {args.window} "
          f"(attention work {rec['attention_work_fraction']:.2f})")
    for n, r in med.items():
        print(f"  {n:5s} denoising {r['denoising_s']:.2f} s, total {r['total_s']:.2f} s")
    print(f"  speed-up: denoising {rec['speedup_denoising']:.2f}x, total {rec['speedup_total']:.2f}x; "
          f"PSNR vs dense {rec['psnr_db_vs_dense']:.2f} dB")
    print(f"wrote {harness.shown(path)}")


if __name__ == "__main__":
    main()
