"""Benchmark: QK RMS-norm, our kernels against the eager composition they replace.

    python benchmarks/kernels/qk_norm.py [--seq-len 8192 --heads 12 --head-dim 128 --mode across]

Providers:
- eager:       torch.nn.RMSNorm modules on q and k (Wan's norm_q / norm_k over H*D, or per head)
- native:      the _C kernel, one call per tensor, into preallocated outputs
- dispatcher:  sglang_diffusion.ops.qk_norm.qk_rms_norm (custom op + allocation + kernels)
- triton:      on CUDA
GB/s counts the bytes read and written; the JSON also holds this machine's copy bandwidth.
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

from sglang_diffusion.ops import _dispatch, _native  # noqa: E402
from sglang_diffusion.ops.qk_norm import qk_rms_norm, qk_rms_norm_reference  # noqa: E402


def measure(device, dtype, batch, seq_len, heads, head_dim, mode, warmup, reps) -> dict:
    b, s, h, d = batch, seq_len, heads, head_dim
    across = mode == "across"
    width = h * d if across else d
    q, k = harness.randn(device, dtype, (b, s, h, d), (b, s, h, d))  # [B, S, H, D]
    norm_q, norm_k = (torch.nn.RMSNorm(width, eps=1e-6).to(device, dtype) for _ in range(2))
    for m in (norm_q, norm_k):
        m.weight.data.uniform_(0.5, 1.5)
    wq, wk = norm_q.weight.detach(), norm_k.weight.detach()
    q_out, k_out = torch.empty_like(q), torch.empty_like(k)

    if across:
        fns = {"eager": lambda: (norm_q(q.flatten(2)), norm_k(k.flatten(2)))}
    else:
        fns = {"eager": lambda: (norm_q(q), norm_k(k))}
    if _dispatch.native_why_not(device, "qk_rms_norm_out") is None:
        ops = _native.native_library().ops

        def native():
            ops.qk_rms_norm_out(q_out, q, wq, 1e-6, across)
            ops.qk_rms_norm_out(k_out, k, wk, 1e-6, across)

        fns["native"] = native
    fns["dispatcher"] = lambda: qk_rms_norm(q, k, wq, wk, 1e-6, across)
    if _dispatch.triton_why_not(device) is None:
        fns["triton"] = lambda: qk_rms_norm(q, k, wq, wk, 1e-6, across, impl="triton")

    expected = qk_rms_norm_reference(q, k, wq, wk, 1e-6, across)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    for g, e in zip(qk_rms_norm(q, k, wq, wk, 1e-6, across), expected):
        torch.testing.assert_close(g.float(), e.float(), atol=tol, rtol=tol)

    nbytes = 2 * (q.numel() + k.numel()) * q.element_size()  # read and write q and k
    timed = harness.time_memory_bound(fns, nbytes, device, warmup, reps)
    return dict(shapes={"q": [b, s, h, d], "k": [b, s, h, d]}, dtype=harness.dtype_name(dtype), mode=mode, **timed)


def main() -> None:
    parser = harness.argument_parser(__doc__)
    harness.add_head_shape(parser, seq_len=8192)
    parser.add_argument("--mode", choices=["across", "per_head"], default="across")
    args = parser.parse_args()

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    fields = measure(
        device, dtype, args.batch, args.seq_len, args.heads, args.head_dim, args.mode, args.warmup, args.reps
    )
    headline = f"qk_norm ({args.mode}) q, k [B, S, H, D] = {fields['shapes']['q']} {args.dtype} on {device}"
    harness.publish(harness.record("qk_norm", device, **fields), f"qk_norm-{args.mode}", args.out_dir, headline)


if __name__ == "__main__":
    main()
