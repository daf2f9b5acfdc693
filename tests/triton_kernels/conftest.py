"""The Triton kernels on the CPU, under Triton's interpreter.

TRITON_INTERPRET must be set before a kernel module is imported (``@triton.jit`` decides then),
so it is set here, when pytest collects this folder, and any kernel module imported earlier is
reloaded. Each program instance costs ~3 ms interpreted: the tests use small shapes and blocks.
"""

import importlib
import os
import sys

import pytest

os.environ["TRITON_INTERPRET"] = "1"
for name in [m for m in sys.modules if m.startswith("sglang_diffusion.triton_kernels.")]:
    importlib.reload(sys.modules[name])


def pytest_collection_modifyitems(items):
    try:
        import triton  # noqa: F401
    except ImportError:
        skip = pytest.mark.skip(reason="the triton package is not installed")
        for item in items:
            if "tests/triton_kernels" in str(item.fspath):
                item.add_marker(skip)
