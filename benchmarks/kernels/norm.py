"""Benchmark: fused norm + adaLN modulation, our kernels against the eager torch composition.

    python benchmarks/kernels/norm.py [--dim 1536 --seq-len 8192 --batch 1 --dtype float32]

Providers, timed in turns after warm-up (harness.py):
- eager:      F.layer_norm(x) * (1 + scale) + shift, what a model writes without the op
- dispatcher: sglang_diffusion.ops.norm.norm_modulate, what models call (custom op + output
              allocation + the chosen kernel)
- kernel:     torch.ops.sglang_diffusion_C.norm_modulate_out into a preallocated output
- triton:     on CUDA
GB/s counts the bytes of x read and of the output written; the JSON also holds this machine's
copy bandwidth. Writes one JSON file to benchmarks/results/ naming the machine, versions,
commit and shapes.
"""

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

from sglang_diffusion.ops import _dispatch, _native  # noqa: E402
from sglang_diffusion.ops.norm import norm_modulate, norm_modulate_reference  # noqa: E402


def measure(device, dtype, batch, seq_len, dim, norm_type, warmup, reps) -> dict:
    eps = 1e-6
    # x [B, S, D], scale and shift [B, 1, D]
    x, scale, shift = harness.randn(device, dtype, (batch, seq_len, dim), (batch, 1, dim), (batch, 1, dim))
    scale = 0.5 * scale
    out = torch.empty_like(x)

    def eager():
        if norm_type == "layer":
            y = F.layer_norm(x, (dim,), eps=eps)
        else:
            y = F.rms_norm(x, (dim,), eps=eps)
        return y * (1 + scale) + shift

    fns = {"eager": eager, "dispatcher": lambda: norm_modulate(x, scale, shift, eps=eps, norm_type=norm_type)}
    if _dispatch.native_why_not(device, "norm_modulate_out") is None:
        ops = _native.native_library().ops

        def kernel():
            ops.norm_modulate_out(out, x, scale, shift, None, None, eps, norm_type)
            return out

        fns["kernel"] = kernel
    if _dispatch.triton_why_not(device) is None:
        fns["triton"] = lambda: norm_modulate(x, scale, shift, eps=eps, norm_type=norm_type, impl="triton")

    expected = norm_modulate_reference(x, scale, shift, eps=eps, norm_type=norm_type).float()
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    for fn in fns.values():
        torch.testing.assert_close(fn().float(), expected, atol=tol, rtol=tol)

    nbytes = 2 * x.numel() * x.element_size()  # read x, write the output
    timed = harness.time_memory_bound(fns, nbytes, device, warmup, reps)
    shapes = {"x": [batch, seq_len, dim], "scale": [batch, 1, dim], "shift": [batch, 1, dim]}
    return dict(shapes=shapes, dtype=harness.dtype_name(dtype), norm_type=norm_type, affine=False, **timed)


def main() -> None:
    parser = harness.argument_parser(__doc__, warmup=5)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq-len", type=int, default=8192)
    parser.add_argument("--dim", type=int, default=1536)
    parser.add_argument("--norm-type", choices=["layer", "rms"], default="layer")
    args = parser.parse_args()

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    fields = measure(device, dtype, args.batch, args.seq_len, args.dim, args.norm_type, args.warmup, args.reps)
    headline = f"norm_modulate ({args.norm_type}) x {fields['shapes']['x']} {args.dtype} on {device}"
    harness.publish(harness.record("norm_modulate", device, **fields), f"norm-{args.dtype}", args.out_dir, headline)


if __name__ == "__main__":
    main()
