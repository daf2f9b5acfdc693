"""Start-up guard: the demo generation (`sglang generate` without --model-path: the native Wan
path) and `sglang generate --help` import none of the libraries that the request does not need
and whose import alone costs seconds: diffusers, transformers (and peft), the server stack,
torch._dynamo (with sympy and inductor); and, once the model is loaded, the demo generation
freezes what it holds (gc.freeze) so that no collection walks it again. How long start-up takes
is benchmarks/startup.py's business; this checks what it is made of."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("diffusers", "transformers", "peft", "fastapi", "uvicorn", "starlette", "sympy", "torch._dynamo",
         "torch._inductor", "triton")


def _run(argv: list[str]) -> tuple[set[str], int]:
    """The modules imported by `sglang <argv>` and how many objects it froze (gc.freeze)."""
    code = ("import gc, json, sys\nfrom sglang_diffusion.cli.main import main\n"
            f"try:\n    rc = main({argv!r})\nexcept SystemExit as e:  # --help\n    rc = e.code\n"
            "print('MODULES=' + json.dumps([sorted(sys.modules), gc.get_freeze_count()]))\nsys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(l for l in proc.stdout.splitlines() if l.startswith("MODULES="))
    modules, frozen = json.loads(line.removeprefix("MODULES="))
    return set(modules), frozen


def _imported(modules: set[str], names) -> list[str]:
    return [n for n in names if n in modules]


@pytest.mark.slow
def test_demo_generation_imports_only_what_the_native_path_needs(tmp_path):
    modules, frozen = _run(["generate", "--prompt", "a red circle", "--output-path", str(tmp_path)])
    assert list(tmp_path.glob("*.mp4"))
    assert _imported(modules, HEAVY) == []
    # torch's objects and the model's, frozen once loaded: no collection walks them again
    assert frozen > 100_000


def test_generate_help_imports_not_even_torch():
    modules, _ = _run(["generate", "--help"])
    assert _imported(modules, ("torch", "numpy", *HEAVY)) == []
