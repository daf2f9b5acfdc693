"""The Python API: `DiffGenerator`, a thin layer over the Engine.

    with DiffGenerator.from_pretrained("path/or/hf-id", dit_precision="fp32") as gen:
        result = gen.generate(prompt="a cat", num_inference_steps=4, return_frames=True)
        result.frames[0]  # uint8 [F, H, W, 3], one array per output
"""

from __future__ import annotations

from sglang_diffusion.config.loading import sampling_params_from_kwargs, server_args_from_kwargs
from sglang_diffusion.config.server_args import ServerArgs
from sglang_diffusion.runtime.engine import Engine
from sglang_diffusion.runtime.result import GenerationResult


class DiffGenerator:
    def __init__(self, args: ServerArgs):
        self.engine = Engine(args).start()

    @classmethod
    def from_pretrained(cls, model_path: str, **server_args) -> "DiffGenerator":
        """Start an engine for `model_path`; keyword arguments are ServerArgs fields (config-file keys)."""
        return cls(server_args_from_kwargs({"model_path": model_path, **server_args}))

    def generate(self, **sampling_params) -> GenerationResult:
        """Generate one request; keyword arguments are SamplingParams fields (config-file keys)."""
        return self.engine.generate(sampling_params_from_kwargs(sampling_params))

    def shutdown(self) -> None:
        self.engine.shutdown()

    def __enter__(self) -> "DiffGenerator":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
