"""Benchmark: the Ulysses layout changes around all_to_all_single, each one pass, against the
reshape/permute/contiguous chains they replace (no communication is timed).

    python benchmarks/kernels/all_to_all.py [--seq-len 8192 --heads 12 --head-dim 128 --world-size 2]

For each change (seq_to_head_send/recv, head_to_seq_send/recv): eager (the reference chain),
dispatcher (ops.all_to_all's default: torch's copy on the CPU) and native (the _C row copy,
asked for); with B = 1 the two middle changes are views.
GB/s counts the bytes read and written; the JSON also holds this machine's copy bandwidth.
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

from sglang_diffusion.ops.all_to_all import KINDS, ulysses_permute, ulysses_permute_reference  # noqa: E402


def measure(device, dtype, batch, seq_len, heads, head_dim, world_size, warmup, reps) -> dict:
    b, s, h, d, p = batch, seq_len, heads, head_dim, world_size
    inputs = {
        "seq_to_head_send": (b, s // p, h, d),
        "seq_to_head_recv": (p, b, s // p, h // p, d),
        "head_to_seq_send": (b, s, h // p, d),
        "head_to_seq_recv": (p, b, s // p, h // p, d),
    }
    fns, nbytes = {}, 0
    for kind in KINDS:
        x = torch.randn(inputs[kind], device=device).to(dtype)
        assert torch.equal(ulysses_permute(x, p, kind), ulysses_permute_reference(x, p, kind))
        fns[f"{kind}:eager"] = lambda x=x, kind=kind: ulysses_permute_reference(x, p, kind)
        fns[f"{kind}:dispatcher"] = lambda x=x, kind=kind: ulysses_permute(x, p, kind)
        fns[f"{kind}:native"] = lambda x=x, kind=kind: ulysses_permute(x, p, kind, impl="native")
        nbytes = 2 * x.numel() * x.element_size()
    with torch.inference_mode():
        results = harness.time_providers(fns, warmup, reps, device)
    copy_gbs = harness.copy_bandwidth_gbs(nbytes // 2, device)
    for r in results.values():
        r["gbs"] = nbytes / r["median_ms"] / 1e6
    speedup = {f"{kind}:{impl}": results[f"{kind}:eager"]["median_ms"] / results[f"{kind}:{impl}"]["median_ms"]
               for kind in KINDS for impl in ("dispatcher", "native")}
    return dict(shapes={k: list(v) for k, v in inputs.items()}, world_size=p, dtype=harness.dtype_name(dtype),
                bytes_moved=nbytes, copy_gbs=copy_gbs, results=results, speedup_vs_eager=speedup)


def main() -> None:
    parser = harness.argument_parser(__doc__)
    harness.add_head_shape(parser, seq_len=8192, batch=2)  # S: the full sequence
    parser.add_argument("--world-size", type=int, default=2)
    args = parser.parse_args()

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    b, s, h, d, p = args.batch, args.seq_len, args.heads, args.head_dim, args.world_size
    fields = measure(device, dtype, b, s, h, d, p, args.warmup, args.reps)
    path = harness.write(harness.record("all_to_all_layout", device, **fields), "all_to_all", args.out_dir)
    results, speedup = fields["results"], fields["speedup_vs_eager"]
    print(f"Ulysses layout changes, S={s} H={h} D={d} B={b} P={p} {args.dtype} on {device}; "
          f"copy {fields['copy_gbs']:.1f} GB/s")
    for kind in KINDS:
        e, dp, n = (results[f"{kind}:{impl}"] for impl in ("eager", "dispatcher", "native"))
        print(f"{kind:>18}: eager {e['median_ms']:7.3f} ms, dispatcher {dp['median_ms']:7.3f} ms "
              f"({speedup[kind + ':dispatcher']:.2f}x), native {n['median_ms']:7.3f} ms "
              f"({speedup[kind + ':native']:.2f}x, {n['gbs']:.1f} GB/s)")
    print(f"wrote {harness.shown(path)}")


if __name__ == "__main__":
    main()
