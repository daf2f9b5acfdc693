"""The portable (non-AVX2) build of the attention, RoPE, QK-norm and layout kernels, against
their references: ATEN_CPU_CAPABILITY=default makes torch, and so _C, run it. One subprocess
for all of them (the variable is read when torch starts)."""

import os
import subprocess
import sys
import textwrap

from tests.ops.helpers import requires_native

SCRIPT = textwrap.dedent(
    """
    import torch
    import sglang_diffusion._C
    from sglang_diffusion.ops.all_to_all import ulysses_permute, ulysses_permute_reference
    from sglang_diffusion.ops.attention import attention, attention_reference
    from sglang_diffusion.ops.qk_norm import qk_rms_norm, qk_rms_norm_reference
    from sglang_diffusion.ops.rope import apply_rope, apply_rope_reference, rope_cos_sin_1d
    assert torch.ops.sglang_diffusion_C.cpu_isa() == "default", torch.ops.sglang_diffusion_C.cpu_isa()
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 37, 3, 40, generator=g) for _ in range(3))
    for got, exp in zip(attention(q, k[:, :29], v[:, :29], backend="native"), attention_reference(q, k[:, :29], v[:, :29])):
        torch.testing.assert_close(got, exp, atol=1e-5, rtol=1e-5)
    cos, sin = rope_cos_sin_1d(torch.arange(37), 40)
    for dtype in (torch.float32, torch.bfloat16):
        tol = 1e-5 if dtype == torch.float32 else 2e-2
        for interleaved in (True, False):
            got = apply_rope(q.to(dtype), k.to(dtype), cos, sin, interleaved, impl="native")
            exp = apply_rope_reference(q.to(dtype), k.to(dtype), cos, sin, interleaved)
            for a, b in zip(got, exp):
                torch.testing.assert_close(a.float(), b.float(), atol=tol, rtol=tol)
        w = torch.randn(120, generator=g)
        got = qk_rms_norm(q.to(dtype), k.to(dtype), w, w, 1e-6, True, impl="native")
        for a, b in zip(got, qk_rms_norm_reference(q.to(dtype), k.to(dtype), w, w, 1e-6, True)):
            torch.testing.assert_close(a.float(), b.float(), atol=tol, rtol=tol)
    x = torch.randn(2, 4, 6, 8, generator=g)
    assert torch.equal(ulysses_permute(x, 2, "seq_to_head_send", impl="native"),
                       ulysses_permute_reference(x, 2, "seq_to_head_send"))
    """
)


@requires_native
def test_portable_build_matches_references():
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "default"}
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
