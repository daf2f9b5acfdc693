"""AdaNorm against the unfused LayerNorm + modulation + gated residual it replaces."""

import torch
import torch.nn.functional as F

from sglang_diffusion.layers.adanorm import AdaNorm


def test_modulated_and_gated_residual_forms_equal_unfused_math():
    g = torch.Generator().manual_seed(0)
    x, branch = torch.randn(2, 5, 8, generator=g), torch.randn(2, 5, 8, generator=g)
    scale, shift, gate = (torch.randn(2, 1, 8, generator=g) for _ in range(3))
    norm = AdaNorm(8, eps=1e-6, elementwise_affine=True)
    with torch.no_grad():
        norm.weight.normal_(generator=g)
        norm.bias.normal_(generator=g)
    with torch.inference_mode():
        layer = F.layer_norm(x, (8,), norm.weight, norm.bias, 1e-6)
        torch.testing.assert_close(norm(x, scale, shift), layer * (1 + scale) + shift)
        torch.testing.assert_close(norm(x), layer)
        residual, out = norm.residual(x, branch, gate, scale, shift)
        torch.testing.assert_close(residual, x + gate * branch)
        torch.testing.assert_close(out, F.layer_norm(residual, (8,), norm.weight, norm.bias, 1e-6) * (1 + scale) + shift)
