"""Step computation masks (SCM): which denoising steps must compute every block.

A mask alternates runs of computed and cached steps. The presets are Cache-DiT's bins for 28
steps (compute, cache, compute, ...), sampled at the request's step count, so that a preset
keeps its share of cached steps at any number of steps; the first and the last step are always
computed. Explicit bins are taken as given: past their end every step is computed.
"""

from __future__ import annotations

# name -> (compute bins, cache bins) over 28 steps, as Cache-DiT defines its presets
PRESET_BINS = {
    "slow": ((8, 3, 3, 2, 1, 1), (1, 2, 2, 2, 3)),
    "medium": ((6, 2, 2, 2, 2, 1), (1, 3, 3, 3, 3)),
    "fast": ((6, 1, 1, 1, 1, 1), (1, 3, 4, 5, 4)),
    "ultra": ((4, 1, 1, 1, 1), (2, 5, 6, 7)),
}
PRESET_STEPS = 28


def mask_from_bins(compute_bins, cache_bins, num_steps: int) -> list[bool]:
    """True where a step computes: compute_bins[0] steps, cache_bins[0] steps, compute_bins[1]...
    Steps past the bins compute."""
    mask: list[bool] = []
    for i, run in enumerate(compute_bins):
        mask += [True] * run
        if i < len(cache_bins):
            mask += [False] * cache_bins[i]
    return (mask + [True] * num_steps)[:num_steps]


def preset_mask(name: str, num_steps: int) -> list[bool]:
    base = mask_from_bins(*PRESET_BINS[name], PRESET_STEPS)
    mask = [base[i * PRESET_STEPS // num_steps] for i in range(num_steps)]
    mask[0] = mask[-1] = True
    return mask


def step_mask(preset: str, compute_bins, cache_bins, num_steps: int) -> list[bool] | None:
    """The mask of one expert's steps; None when no SCM is asked for."""
    if compute_bins is not None:
        return mask_from_bins(compute_bins, cache_bins, num_steps)
    if preset != "none":
        return preset_mask(preset, num_steps)
    return None
