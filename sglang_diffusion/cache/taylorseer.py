"""TaylorSeer: the cached residual of skipped blocks extrapolated from the steps that computed it.

TaylorSeer expands the residual in a Taylor series around the last computed step, its
derivatives taken as finite differences of the computed steps. Here the differences are
divided differences over the last `order + 1` computed steps (Newton's form), which makes the
extrapolation exact for a residual that is a polynomial of degree `order` in the step index,
whatever the gaps between computed steps; order 1 is the same line through the last two
computed residuals as cache-dit's.
"""

from __future__ import annotations

import torch

Tensors = tuple[torch.Tensor, ...]


class TaylorSeer:
    def __init__(self, order: int):
        self.order = order
        self.steps: list[int] = []
        self.values: list[Tensors] = []

    def update(self, step: int, value: Tensors) -> None:
        """Record the residual computed at `step`."""
        self.steps = [*self.steps, step][-(self.order + 1):]
        self.values = [*self.values, value][-(self.order + 1):]

    def predict(self, step: int) -> Tensors:
        """The residual at `step`: the polynomial through the recorded steps, evaluated there
        (the last value alone while only one step is recorded)."""
        steps, table = self.steps, list(self.values)
        out = list(table[-1])
        # Newton's form around the newest points: p(t) = y_n + f[n, n-1](t - s_n) + f[n, n-1, n-2](t - s_n)(t - s_{n-1})
        weight = 1.0
        for k in range(1, len(steps)):
            table = [tuple((a - b) / (steps[i + k] - steps[i]) for a, b in zip(table[i + 1], table[i]))
                     for i in range(len(table) - 1)]
            weight *= step - steps[-k]
            out = [o + weight * d for o, d in zip(out, table[-1])]
        return tuple(out)
