"""Compiles every Triton kernel ahead of time for a GPU target, with no GPU: CI's proof that
the kernels build for Hopper (``python -m sglang_diffusion.triton_kernels.aot --arch 90``).

Each kernel module lists its builds in ``AOT_SPECS`` (name, kernel, signature, constexprs,
num_warps, num_stages). Exits 1 naming every build that fails.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time

MODULES = ("attention", "sliding_tile_attention", "sage_attention", "rope", "norm", "qk_norm", "activation")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 80 or 90")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("aot: unset TRITON_INTERPRET: interpreted kernels cannot be compiled", file=sys.stderr)
        return 2
    import triton
    from triton.backends.compiler import GPUTarget

    target = GPUTarget("cuda", args.arch, 32)
    failures = []
    count = 0
    start = time.perf_counter()
    for name in MODULES:
        module = importlib.import_module(f"sglang_diffusion.triton_kernels.{name}")
        for label, fn, signature, constexprs, warps, stages in module.AOT_SPECS():
            count += 1
            src = triton.compiler.ASTSource(fn=fn, signature={**signature, **{k: "constexpr" for k in constexprs}},
                                            constexprs=constexprs)
            try:
                compiled = triton.compile(src, target=target, options={"num_warps": warps, "num_stages": stages})
                assert compiled.asm.get("cubin"), "no cubin produced"
            except Exception as exc:  # every failure is reported, then CI fails
                failures.append(f"{label}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    took = time.perf_counter() - start
    for failure in failures:
        print(f"aot: FAILED sm_{args.arch} {failure}", file=sys.stderr)
    print(f"aot: {count - len(failures)}/{count} Triton builds compiled for sm_{args.arch} in {took:.1f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
