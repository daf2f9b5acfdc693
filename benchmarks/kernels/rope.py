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


def measure(device, dtype, batch, seq_len, heads, head_dim, warmup, reps) -> dict:
    b, s, h, d = batch, seq_len, heads, head_dim
    q, k = harness.randn(device, dtype, (b, s, h, d), (b, s, h, d))  # [B, S, H, D]
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

    nbytes = 2 * (q.numel() + k.numel()) * q.element_size()  # read and write q and k
    timed = harness.time_memory_bound(fns, nbytes, device, warmup, reps)
    shapes = {"q": [b, s, h, d], "k": [b, s, h, d], "cos": [s, d // 2]}
    return dict(shapes=shapes, dtype=harness.dtype_name(dtype), interleaved=True, **timed)


def main() -> None:
    parser = harness.argument_parser(__doc__)
    harness.add_head_shape(parser, seq_len=8192)
    args = parser.parse_args()

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    fields = measure(device, dtype, args.batch, args.seq_len, args.heads, args.head_dim, args.warmup, args.reps)
    headline = f"rope q, k [B, S, H, D] = {fields['shapes']['q']} {args.dtype} on {device}"
    harness.publish(harness.record("rope", device, **fields), "rope", args.out_dir, headline)


if __name__ == "__main__":
    main()
