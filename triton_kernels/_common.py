"""What the launchers share."""

from __future__ import annotations

import triton
from triton import knobs

# Triton's element types of the torch dtypes the kernels take (AOT signatures use them).
TL_DTYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


def interpreting() -> bool:
    """Whether kernels run under TRITON_INTERPRET=1 (on the CPU): tiny blocks, fp32 dots."""
    return bool(knobs.runtime.interpret)


def next_pow2(n: int, minimum: int = 1) -> int:
    return max(minimum, triton.next_power_of_2(max(1, n)))
