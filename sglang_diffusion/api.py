"""The Python API: `DiffGenerator`, a thin layer over the Engine.

    with DiffGenerator.from_pretrained("path/or/hf-id", dit_precision="fp32") as gen:
        result = gen.generate(prompt="a cat", num_inference_steps=4, return_frames=True)
        result.frames[0]  # uint8 [F, H, W, 3]
        results = gen.generate(prompt=["a cat", "a dog"], seed=[1, 2])  # four results, one per output
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

    def generate(self, **sampling_params) -> GenerationResult | list[GenerationResult]:
        """Generate; keyword arguments are SamplingParams fields (config-file keys). One output:
        its result; several (prompt or seed lists, prompt_path, num_outputs_per_prompt): a list
        of results, one per output, by prompt, then seed, then output (batched where they fit,
        `max_batch_size`)."""
        results = self.engine.generate_all(sampling_params_from_kwargs(sampling_params))
        outputs = [one for result in results for one in result.per_output()]
        return outputs[0] if len(outputs) == 1 else outputs

    # -- LoRA adapters (on every rank, between requests; `loader.lora`) ----------------------
    def set_lora(self, lora_nickname: str | list[str], lora_path: str | list[str | None] | None = None,
                 target: str | list[str] = "all", strength: float | list[float] = 1.0) -> dict:
        """Load adapter(s) by nickname (a path the first time; then kept in host memory) and merge
        exactly them, each at its strength, into `target` (all, transformer, transformer_2, ...).
        A bad path or file leaves the weights as they were. Returns `list_loras()`."""
        from sglang_diffusion.loader.lora import lora_specs, set_loras

        return self.engine.call(set_loras, lora_specs(lora_nickname, lora_path, target, strength))

    def merge_lora(self, target: str | None = None, strength: float | None = None) -> dict:
        """Merge the last set adapters again (after unmerge_lora), optionally elsewhere or at another strength."""
        from sglang_diffusion.loader.lora import merge_loras

        return self.engine.call(merge_loras, target, strength)

    def unmerge_lora(self) -> dict:
        """Back to the base weights, bit for bit (the adapters stay loaded)."""
        from sglang_diffusion.loader.lora import unmerge_loras

        return self.engine.call(unmerge_loras)

    def list_loras(self) -> dict:
        """{"loaded_adapters": [{nickname, path}], "active": {component: [{nickname, path, merged, strength}]}}."""
        from sglang_diffusion.loader.lora import list_loras

        return self.engine.call(list_loras)

    def shutdown(self) -> None:
        self.engine.shutdown()

    def __enter__(self) -> "DiffGenerator":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
