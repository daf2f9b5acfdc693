"""Benchmark: tanh-approximate GELU, our kernels against eager F.gelu.

    python benchmarks/kernels/activation.py [--shapes 2304x2048 8192x8960 --dtype float32]

Providers:
- eager:                F.gelu(x, approximate="tanh"), allocating its output
- eager into out:       the same ATen kernel into a preallocated output (aten::gelu.out)
- native:               the _C kernel into a preallocated output
- native in place:      the _C kernel overwriting its input, as the feed-forward runs it
- dispatcher:           sglang_diffusion.ops.activation.gelu_tanh (custom op + allocation + kernel)
- dispatcher in place:  gelu_tanh(h, inplace=True) (custom op + kernel)
- triton:               on CUDA
Default shapes: a [2304, 2048] hidden state, and Wan2.1-1.3B's FFN width 8960 over 8k tokens.
The in-place providers apply GELU again to their own output each repetition; the kernels' cost
does not depend on the values (no branches, and over these few repetitions the negative values
shrink towards 0 without reaching the denormal range). GB/s counts the bytes read and written;
the JSON also holds this machine's copy bandwidth.
"""

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

from sglang_diffusion.ops import _dispatch, _native  # noqa: E402
from sglang_diffusion.ops.activation import gelu_tanh, gelu_tanh_reference  # noqa: E402


def shape_arg(text: str) -> tuple[int, ...]:
    return tuple(int(n) for n in text.split("x"))


def measure(device, dtype, shape, warmup, reps) -> dict:
    (x,) = harness.randn(device, dtype, shape)
    out, h, hd = torch.empty_like(x), x.clone(), x.clone()
    fns = {
        "eager": lambda: F.gelu(x, approximate="tanh"),
        "eager into out": lambda: torch.ops.aten.gelu.out(x, approximate="tanh", out=out),
    }
    if _dispatch.native_why_not(device, "gelu_tanh_out") is None:
        ops = _native.native_library().ops
        fns["native"] = lambda: ops.gelu_tanh_out(out, x)
        fns["native in place"] = lambda: ops.gelu_tanh_out(h, h)
    fns["dispatcher"] = lambda: gelu_tanh(x)
    fns["dispatcher in place"] = lambda: gelu_tanh(hd, inplace=True)
    if _dispatch.triton_why_not(device) is None:
        fns["triton"] = lambda: gelu_tanh(x, impl="triton")

    tol = 1e-6 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(gelu_tanh(x).float(), gelu_tanh_reference(x).float(), atol=tol, rtol=tol)

    nbytes = 2 * x.numel() * x.element_size()  # read x, write the output
    return {"shape": list(shape), **harness.time_memory_bound(fns, nbytes, device, warmup, reps)}


def main() -> None:
    parser = harness.argument_parser(__doc__, reps=20)
    parser.add_argument("--shapes", type=shape_arg, nargs="+", default=[(2304, 2048), (8192, 8960)])
    args = parser.parse_args()

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    runs = [measure(device, dtype, shape, args.warmup, args.reps) for shape in args.shapes]
    rec = harness.record("activation", device, op="gelu_tanh", dtype=args.dtype, runs=runs)
    path = harness.write(rec, f"activation-{args.dtype}", args.out_dir)
    for run in runs:
        print(f"gelu_tanh x {run['shape']} {args.dtype} on {device}; copy bandwidth {run['copy_gbs']:.1f} GB/s")
        harness.print_results(run["results"], "eager", harness.gbs_column)
    print(f"wrote {harness.shown(path)}")


if __name__ == "__main__":
    main()
