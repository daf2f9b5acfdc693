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


def _add_flop_rate(results: dict, flops: int, ceiling_gflops: float) -> None:
    for r in results.values():
        r["gflops"] = flops / r["median_ms"] / 1e6
        r["fraction_of_matmul"] = r["gflops"] / ceiling_gflops


def _single_thread_cpu_time(fns: dict, flops: int, reps: int, device: torch.device) -> tuple[dict, dict]:
    """sdpa and native on one thread, by the thread's CPU time, with the matmul ceiling alike."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            single = harness.time_providers({n: fns[n] for n in ("sdpa", "native")}, 1, reps, device, clock="thread")
            n = 2048
            a, m = torch.randn(n, n), torch.randn(n, n)
            mm = harness.time_providers({"mm": lambda: a @ m}, 1, reps, device, clock="thread")["mm"]
    finally:
        torch.set_num_threads(threads)
    matmul = {**mm, "gflops": 2 * n**3 / mm["median_ms"] / 1e6}
    _add_flop_rate(single, flops, matmul["gflops"])
    return single, matmul


def measure(device, dtype, batch, seq_len, heads, head_dim, warmup, reps, matmul_n: int = 2048) -> dict:
    """`matmul_n`: the size of the n x n x n matmul that gives the ceiling (a GPU needs a large one)."""
    b, s, h, d = batch, seq_len, heads, head_dim
    q, k, v = harness.randn(device, dtype, *[(b, s, h, d)] * 3)  # [B, S, H, D]
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
        results = harness.time_providers(fns, warmup, reps, device)
        peak = harness.matmul_gflops(device, dtype, matmul_n)
    flops = 4 * b * h * s * s * d
    _add_flop_rate(results, flops, peak)
    single = single_matmul = None
    if device.type == "cpu" and "native" in fns:
        single, single_matmul = _single_thread_cpu_time(fns, flops, reps, device)
    return dict(
        shapes={"q": [b, s, h, d], "k": [b, s, h, d], "v": [b, s, h, d]}, dtype=harness.dtype_name(dtype),
        flops=flops, matmul_gflops=peak, results=results, speedup_vs_sdpa=harness.speedups(results, "sdpa"),
        single_thread_cpu_time=single, single_thread_matmul_2048=single_matmul,
    )


def _flop_column(name: str, r: dict) -> str:
    return f"{r['gflops']:.1f} GFLOP/s ({100 * r['fraction_of_matmul']:.0f}% of matmul)"


def main() -> None:
    parser = harness.argument_parser(__doc__, warmup=1, reps=5)
    harness.add_head_shape(parser, seq_len=4096)
    args = parser.parse_args()

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    fields = measure(device, dtype, args.batch, args.seq_len, args.heads, args.head_dim, args.warmup, args.reps)
    headline = (f"attention [B, S, H, D] = {fields['shapes']['q']} {args.dtype} on {device}; "
                f"matmul ceiling {fields['matmul_gflops']:.1f} GFLOP/s")
    rec = harness.record("attention", device, **fields)
    harness.publish(rec, "attention", args.out_dir, headline, baseline="sdpa", extra=_flop_column)
    if fields["single_thread_cpu_time"]:
        print(f"one thread, CPU time per call (matmul ceiling {fields['single_thread_matmul_2048']['gflops']:.1f} "
              "GFLOP/s):")
        harness.print_results(fields["single_thread_cpu_time"], "sdpa", _flop_column)


if __name__ == "__main__":
    main()
