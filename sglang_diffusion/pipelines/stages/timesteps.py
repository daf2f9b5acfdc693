"""Timestep preparation: the scheduler's schedule for the request's number of steps.

`FlowShiftTimestepStage` is the rule of diffusers' FLUX and Qwen-Image pipelines: sigmas evenly
spaced from 1 to 1/n, shifted by mu, which grows linearly with the number of image tokens
(`flow_shift_mu`), so larger images spend more steps at high noise.

A request's `flow_shift` replaces the scheduler's shift (`ScheduleShift`): UniPC's `flow_shift`
(Wan), FlowMatchEuler's `shift` (HunyuanVideo), and on the schedulers that shift by image
tokens (FLUX, Qwen-Image) the mu whose time shift is that same static shift."""

from __future__ import annotations

import math

import numpy as np

from sglang_diffusion.errors import InvalidRequestError
from sglang_diffusion.pipelines.stages.base import GenerationState, Stage


class ScheduleShift:
    """The shift of a flow-matching schedule, sigma -> s * sigma / (1 + (s - 1) * sigma), per
    request: `flow_shift` when the request gives one, else the scheduler config's own."""

    def __init__(self, scheduler):
        config = scheduler.config
        self.key = "flow_shift" if config.get("use_flow_sigmas") else "shift" if "shift" in config else None
        self.default = config.get(self.key) if self.key else None
        self.dynamic = bool(config.get("use_dynamic_shifting"))
        self.exponential = config.get("time_shift_type", "exponential") == "exponential"
        self.name = type(scheduler).__name__

    def check(self, flow_shift: float | None) -> None:
        if flow_shift is not None and self.key is None:
            raise InvalidRequestError(f"flow_shift: this model's scheduler ({self.name}) has no flow-matching shift")

    def apply(self, scheduler, flow_shift: float | None) -> None:
        """Set the static shift set_timesteps uses (nothing for a scheduler that shifts by mu)."""
        self.check(flow_shift)
        if self.dynamic:
            return
        shift = flow_shift if flow_shift is not None else self.default
        if self.key == "flow_shift":
            scheduler.register_to_config(flow_shift=shift)  # UniPC reads its config in set_timesteps
        elif self.key == "shift":
            scheduler.set_shift(shift)

    def mu(self, flow_shift: float) -> float:
        """The mu of a dynamic-shifting scheduler whose time shift equals the static `flow_shift`:
        exp(mu) / (exp(mu) + 1 / t - 1) is s t / (1 + (s - 1) t) at exp(mu) = s (linear: mu = s)."""
        self.check(flow_shift)
        return math.log(flow_shift) if self.exponential else flow_shift


class TimestepPreparationStage(Stage):
    name = "timestep_preparation"
    reads = ("params",)
    writes = ("timesteps",)
    per_batch = True

    def __init__(self, scheduler):
        self.scheduler = scheduler
        self.shift = ScheduleShift(scheduler)

    def describe(self) -> str:
        return f"{self.name}({type(self.scheduler).__name__})"

    def __call__(self, state: GenerationState) -> None:
        self.shift.apply(self.scheduler, state.params.flow_shift)
        self.scheduler.set_timesteps(state.params.num_inference_steps, device=state.device)
        self.scheduler.set_begin_index(0)
        state.timesteps = self.scheduler.timesteps


def flow_shift_mu(image_tokens: int, scheduler_config) -> float:
    """diffusers' `calculate_shift`: mu from base_shift at base_image_seq_len tokens to max_shift
    at max_image_seq_len, linear in between (and beyond), with diffusers' defaults."""
    base_len = scheduler_config.get("base_image_seq_len", 256)
    max_len = scheduler_config.get("max_image_seq_len", 4096)
    base_shift = scheduler_config.get("base_shift", 0.5)
    max_shift = scheduler_config.get("max_shift", 1.15)
    slope = (max_shift - base_shift) / (max_len - base_len)
    return image_tokens * slope + base_shift - slope * base_len


def flux2_empirical_mu(image_tokens: int, num_steps: int) -> float:
    """diffusers' FLUX.2 `compute_empirical_mu`: mu fitted to the number of image tokens and of
    steps (linear in the tokens alone past 4300 of them)."""
    a1, b1, a2, b2 = 8.73809524e-05, 1.89833333, 0.00016927, 0.45666666
    if image_tokens > 4300:
        return float(a2 * image_tokens + b2)
    m_200, m_10 = a2 * image_tokens + b2, a1 * image_tokens + b1
    a = (m_200 - m_10) / 190.0
    return float(a * num_steps + m_200 - 200.0 * a)


class FlowShiftTimestepStage(Stage):
    """`patch`: the DiT's (frames, height, width) patch over the latents [B, C, F, H, W], which
    gives the number of image tokens. `empirical_mu`: FLUX.2's rule (`flux2_empirical_mu`, by
    tokens and steps) instead of the scheduler config's linear one."""

    name = "timestep_preparation"
    reads = ("params", "latents")
    writes = ("timesteps",)
    per_batch = True

    def __init__(self, scheduler, patch: tuple[int, int, int], empirical_mu: bool = False):
        self.scheduler, self.patch, self.empirical_mu = scheduler, tuple(patch), empirical_mu
        self.shift = ScheduleShift(scheduler)

    def describe(self) -> str:
        return f"{self.name}({type(self.scheduler).__name__}, shift by image tokens)"

    def __call__(self, state: GenerationState) -> None:
        n = state.params.num_inference_steps
        tokens = math.prod(s // p for s, p in zip(state.latents.shape[2:], self.patch))
        if state.params.flow_shift is not None:
            mu = self.shift.mu(state.params.flow_shift)
        elif self.empirical_mu:
            mu = flux2_empirical_mu(tokens, n)
        else:
            mu = flow_shift_mu(tokens, self.scheduler.config)
        self.scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / n, n), mu=mu, device=state.device)
        if bool(self.scheduler.timesteps.isnan().any()):  # diffusers divides by zero (and makes a black image)
            raise InvalidRequestError(f"num_inference_steps {n}: this scheduler's shift_terminal needs at least 2 "
                                      "steps")
        self.scheduler.set_begin_index(0)
        state.timesteps = self.scheduler.timesteps
