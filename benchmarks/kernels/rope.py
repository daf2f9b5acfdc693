"""Benchmark: RoPE on q and k, our kernels against the eager composition they replace.

    python benchmarks/kernels/rope.py [--seq-len 8192 --heads 12 --head-dim 128 --dtype float32]

Providers:
- eager:       diffusers' Wan rotation (unflatten, strided writes into an empty_like, type_as),
               applied to q and to k
- native:      the _C kernel (both tensors in one call), into preallocated outputs
- dispatcher:  sglang_diffusion.ops.rope.apply_rope (custom op + allocation + kernel)
- triton:      on CUDA
Defaults are Wan2.1-1.3B's self-attention: 12 heads x 128 (width 1536) over 8k tokens. GB/s
counts the bytes read and written; the JSON also holds this machine's copy bandwidth.
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

from sglang_diffusion.ops import _dispatch, _native  # noqa: E402
from sglang_diffusion.ops.rope import apply_rope, apply_rope_reference, rope_cos_sin_1d  # noqa: E402


def wan_rotary(x, freqs_cos, freqs_sin):
    """diffusers' transformer_wan.apply_rotary_emb, with its [1, S, 1, D] repeated tables."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos = freqs_cos[..., 0::2]
    sin = freqs_sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


def main() -> None:
    parser = harness.argument_parser(__doc__)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq-len", type=int, default=8192)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--head-dim", type=int, default=128)
    args = parser.parse_args()

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    b, s, h, d = args.batch, args.seq_len, args.heads, args.head_dim
    gen = torch.Generator(device=device).manual_seed(0)
    q, k = (torch.randn(b, s, h, d, generator=gen, device=device).to(dtype) for _ in range(2))  # [B, S, H, D]
    cos, sin = (t.to(device) for t in rope_cos_sin_1d(torch.arange(s), d))  # [S, D/2]
    # diffusers keeps the tables as [1, S, 1, D], each angle repeated for both members of a pair.
    cos_full = cos.repeat_interleave(2, dim=-1)[None, :, None, :]
    sin_full = sin.repeat_interleave(2, dim=-1)[None, :, None, :]
    q_out, k_out = torch.empty_like(q), torch.empty_like(k)

    fns = {"eager": lambda: (wan_rotary(q, cos_full, sin_full), wan_rotary(k, cos_full, sin_full))}
    if _dispatch.native_why_not(device, "rope_out") is None:
        ops = _native.native_library().ops
        fns["native"] = lambda: ops.rope_out(q_out, k_out, q, k, cos, sin, True)
    fns["dispatcher"] = lambda: apply_rope(q, k, cos, sin, True)
    if _dispatch.triton_why_not(device) is None:
        fns["triton"] = lambda: apply_rope(q, k, cos, sin, True, impl="triton")

    expected = apply_rope_reference(q, k, cos, sin, True)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    for got in (fns["eager"](), apply_rope(q, k, cos, sin, True)):
        for g, e in zip(got, expected):
            torch.testing.assert_close(g.float(), e.float(), atol=tol, rtol=tol)

    with torch.inference_mode():
        results = harness.time_providers(fns, args.warmup, args.reps, device)
    nbytes = 2 * (q.numel() + k.numel()) * q.element_size()  # read and write q and k
    copy_gbs = harness.copy_bandwidth_gbs(nbytes // 2, device)
    for r in results.values():
        r["gbs"] = nbytes / r["median_ms"] / 1e6
    rec = harness.record(
        "rope", device, shapes={"q": [b, s, h, d], "k": [b, s, h, d], "cos": [s, d // 2]}, dtype=args.dtype,
        interleaved=True, bytes_moved=nbytes, copy_gbs=copy_gbs, results=results,
        speedup_vs_eager={n: results["eager"]["median_ms"] / r["median_ms"] for n, r in results.items() if n != "eager"},
    )
    path = harness.write(rec, "rope", args.out_dir)
    print(f"rope q, k [B, S, H, D] = {[b, s, h, d]} {args.dtype} on {device}; copy bandwidth {copy_gbs:.1f} GB/s")
    harness.print_results(results, "eager", lambda n, r: f"{r['gbs']:.1f} GB/s")
    print(f"wrote {harness.shown(path)}")


if __name__ == "__main__":
    main()
