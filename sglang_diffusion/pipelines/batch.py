"""Several requests in one forward: their states stacked along the batch, and split back.

A native pipeline runs each request of a batch through its per-request stages on its own (its
prompt's text encoding, its seed's noise, its image), exactly as the request alone would, then
stacks the states of the requests and runs the per-batch stages (timesteps, denoising, decoding)
once. Every batch-dimension tensor a per-request stage writes (`BATCH_FIELDS`, and the
conditioning's own, through its `cat`) is concatenated; the rest (the resolved parameters, CFG
on or off) is equal across a batch by the batch key (`runtime.batching`).

States stack only when those tensors agree in every dimension but the batch: prompts encoded
without padding (Qwen-Image, HunyuanVideo) of different token counts go in separate forwards
(`stack_groups`); prompts padded to a fixed length (Wan, FLUX.1, FLUX.2) always stack.
"""

from __future__ import annotations

import dataclasses

import torch

from sglang_diffusion.pipelines.stages.base import GenerationState

# GenerationState fields with one row per output, written before the per-batch stages
BATCH_FIELDS = ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds",
                "image_embeds", "latents")


def _shape(value):
    """What must agree for values to stack: tensors' shapes past the batch and dtypes, recursively."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        return tuple(value.shape[1:]), value.dtype
    if isinstance(value, (list, tuple)):
        return tuple(_shape(v) for v in value)
    if dataclasses.is_dataclass(value):
        return tuple(_shape(getattr(value, f.name)) for f in dataclasses.fields(value))
    raise TypeError(f"cannot batch a {type(value).__name__}")


def _cat(values: list):
    """Stack along the batch: tensors, and lists, tuples and dataclasses of them."""
    first = values[0]
    if first is None:
        return None
    if isinstance(first, torch.Tensor):
        return torch.cat(values)
    if isinstance(first, (list, tuple)):
        return type(first)(_cat(list(items)) for items in zip(*values))
    return dataclasses.replace(first, **{f.name: _cat([getattr(v, f.name) for v in values])
                                         for f in dataclasses.fields(first)})


def stack_key(state: GenerationState) -> tuple:
    return (state.do_cfg, type(state.conditioning), *(_shape(getattr(state, f)) for f in BATCH_FIELDS))


def stack_groups(states: list[GenerationState]) -> list[list[GenerationState]]:
    """The states in groups that stack, in order of first appearance."""
    groups: dict[tuple, list[GenerationState]] = {}
    for state in states:
        groups.setdefault(stack_key(state), []).append(state)
    return list(groups.values())


def stack(states: list[GenerationState]) -> GenerationState:
    """One state for the batch (the state itself for a batch of one)."""
    if len(states) == 1:
        return states[0]
    first = states[0]
    merged = GenerationState(params=first.params, hooks=first.hooks, device=first.device,
                             batch_size=sum(s.batch_size for s in states), do_cfg=first.do_cfg,
                             image=first.image, conditioning=first.conditioning.cat([s.conditioning for s in states]))
    for name in BATCH_FIELDS:
        setattr(merged, name, _cat([getattr(s, name) for s in states]))
    return merged


def unstack(merged: GenerationState, states: list[GenerationState]) -> None:
    """Each request's rows of what the per-batch stages wrote, and their timings."""
    if len(states) == 1:
        return
    start = 0
    for state in states:
        rows = slice(start, start + state.batch_size)
        start += state.batch_size
        state.latents = merged.latents[rows]
        state.frames = merged.frames[rows] if merged.frames is not None else None
        state.timesteps, state.cache_stats = merged.timesteps, merged.cache_stats
        for stage, seconds in merged.timings.items():
            state.timings[stage] = state.timings.get(stage, 0.0) + seconds
