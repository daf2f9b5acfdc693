"""Timestep preparation: the scheduler's schedule for the request's number of steps."""

from __future__ import annotations

from sglang_diffusion.pipelines.stages.base import GenerationState, Stage


class TimestepPreparationStage(Stage):
    name = "timestep_preparation"
    reads = ("params",)
    writes = ("timesteps",)

    def __init__(self, scheduler):
        self.scheduler = scheduler

    def describe(self) -> str:
        return f"{self.name}({type(self.scheduler).__name__})"

    def __call__(self, state: GenerationState) -> None:
        self.scheduler.set_timesteps(state.params.num_inference_steps, device=state.device)
        self.scheduler.set_begin_index(0)
        state.timesteps = self.scheduler.timesteps
