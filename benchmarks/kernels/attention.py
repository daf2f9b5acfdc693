"""Benchmark: attention forward, our kernels against torch SDPA (and flash-attn on a GPU).

    python benchmarks/kernels/attention.py [--seq-len 4096 --heads 12 --head-dim 128 --dtype float32]

Providers (each [B, S, H, D] in, as the attention backends take it):
- sdpa:        F.scaled_dot_product_attention on the [B, H, S, D] views (the torch_sdpa backend)
- native:      the _C kernel (CPU: csrc/cpu/attention.cpp), into preallocated out/lse
- dispatcher:  sglang_diffusion.ops.attention.attention (custom op + allocation + kernel)
- triton, sage_triton, flash_attn: on CUDA (the last when the package is installed)
GFLOP/s counts 4 B H Sq Sk D; the JSON also holds this machine's measured matmul rate in the
same dtype, the ceiling. On the CPU a second table times sdpa and native on one thread by the
thread's CPU time (harness.py), which other work on a shared machine does not inflate.
One JSON file per run in benchmarks/results/.
"""

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

from sglang_diffusion.ops import _dispatch, _native  # noqa: E402
from sglang_diffusion.ops.attention import attention, attention_reference  # noqa: E402


def main() -> None:
    parser = harness.argument_parser(__doc__, warmup=1, reps=5)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq-len", type=int, default=4096)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--head-dim", type=int, default=128)
    args = parser.parse_args()

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    b, s, h, d = args.batch, args.seq_len, args.heads, args.head_dim
    gen = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(b, s, h, d, generator=gen, device=device).to(dtype) for _ in range(3))  # [B, S, H, D]
    out, lse = torch.empty_like(q), torch.empty(b, h, s, device=device)
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, S, D] views

    fns = {"sdpa": lambda: F.scaled_dot_product_attention(qt, kt, vt)}
    if _dispatch.native_why_not(device, "attention_out") is None:
        ops = _native.native_library().ops
        fns["native"] = lambda: ops.attention_out(out, lse, q, k, v, d ** -0.5)
    fns["dispatcher"] = lambda: attention(q, k, v)
    if _dispatch.triton_why_not(device) is None:
        from sglang_diffusion.ops.sage_attention import sage_attention

        fns["triton"] = lambda: attention(q, k, v, backend="triton")
        if dtype != torch.float32:
            fns["sage_triton"] = lambda: sage_attention(q, k, v, impl="triton")
    if device.type == "cuda" and dtype != torch.float32:
        try:
            from flash_attn import flash_attn_func

            fns["flash_attn"] = lambda: flash_attn_func(q, k, v)
        except ImportError:
            pass

    # Correctness first, on a slice small enough for the reference.
    sl = slice(0, min(s, 512))
    ref, _ = attention_reference(q[:, sl], k[:, sl], v[:, sl])
    for name in ("native", "dispatcher", "triton"):
        if name in fns:
            got = attention(q[:, sl], k[:, sl], v[:, sl], backend=None if name == "dispatcher" else name)[0]
            torch.testing.assert_close(got.float(), ref.float(), atol=2e-2 if dtype != torch.float32 else 1e-4,
                                       rtol=1e-2)

    with torch.inference_mode():
        results = harness.time_providers(fns, args.warmup, args.reps, device)
        peak = harness.matmul_gflops(device, dtype)
    flops = 4 * b * h * s * s * d
    for r in results.values():
        r["gflops"] = flops / r["median_ms"] / 1e6
        r["fraction_of_matmul"] = r["gflops"] / peak
    single = single_matmul = None
    if device.type == "cpu" and "native" in fns:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with torch.inference_mode():
                single = harness.time_providers({n: fns[n] for n in ("sdpa", "native")}, 1, args.reps, device,
                                                clock="thread")
                n = 2048
                a, m = torch.randn(n, n), torch.randn(n, n)
                mm = harness.time_providers({"mm": lambda: a @ m}, 1, args.reps, device, clock="thread")["mm"]
        finally:
            torch.set_num_threads(threads)
        for r in single.values():
            r["gflops"] = flops / r["median_ms"] / 1e6
            r["fraction_of_matmul"] = r["gflops"] / (2 * n**3 / mm["median_ms"] / 1e6)
        single_matmul = {**mm, "gflops": 2 * n**3 / mm["median_ms"] / 1e6}
    rec = harness.record(
        "attention", device, shapes={"q": [b, s, h, d], "k": [b, s, h, d], "v": [b, s, h, d]}, dtype=args.dtype,
        flops=flops, matmul_gflops=peak, results=results,
        speedup_vs_sdpa={n: results["sdpa"]["median_ms"] / r["median_ms"] for n, r in results.items() if n != "sdpa"},
        single_thread_cpu_time=single, single_thread_matmul_2048=single_matmul,
    )
    path = harness.write(rec, "attention", args.out_dir)
    print(f"attention [B, S, H, D] = {[b, s, h, d]} {args.dtype} on {device}; matmul ceiling {peak:.1f} GFLOP/s")
    harness.print_results(results, "sdpa", lambda n, r: f"{r['gflops']:.1f} GFLOP/s ({100 * r['fraction_of_matmul']:.0f}% of matmul)")
    if single:
        print(f"one thread, CPU time per call (matmul ceiling {single_matmul['gflops']:.1f} GFLOP/s):")
        harness.print_results(single, "sdpa", lambda n, r: f"{r['gflops']:.1f} GFLOP/s "
                                                           f"({100 * r['fraction_of_matmul']:.0f}% of matmul)")
    print(f"wrote {harness.shown(path)}")


if __name__ == "__main__":
    main()
