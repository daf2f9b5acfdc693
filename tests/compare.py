"""How the tests compare our outputs with a reference's: relative error of tensors, PSNR of
uint8 images or frames."""

from __future__ import annotations

import numpy as np


def rel_err(a, b) -> float:
    """||a - b|| / ||a|| of two tensors, computed in fp32."""
    return ((a.float() - b.float()).norm() / a.float().norm()).item()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)
