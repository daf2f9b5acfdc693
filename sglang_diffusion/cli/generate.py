"""`sglang generate`: build the engine, run the request (one per prompt and seed, batched where
they fit), write the outputs, print where they went."""

from __future__ import annotations

import dataclasses
import gc
import logging
from typing import Sequence

from sglang_diffusion.cli.args import build_parser, parse
from sglang_diffusion.cli.settings import effective_settings
from sglang_diffusion.config.sampling_params import SamplingParams
from sglang_diffusion.config.server_args import ServerArgs
from sglang_diffusion.errors import ConfigError
from sglang_diffusion.log import configure_logging
from sglang_diffusion.runtime.result import GenerationResult

logger = logging.getLogger("sglang_diffusion.cli")


def format_result(result: GenerationResult) -> str:
    kind = f"video, {result.num_frames} frames at {result.fps} fps" if result.is_video else "image"
    lines = [f"saved {path} ({result.width}x{result.height} {kind}, seed {result.seed})" for path in result.files]
    if not result.files:
        lines.append(f"generated {result.width}x{result.height} {kind}, seed {result.seed} (not saved)")
    stages = ", ".join(f"{k} {v:.2f} s" for k, v in result.timings.items() if k != "total")
    cache = f"; cache {result.cache}" if result.cache else ""
    lines.append(f"time: {result.timings.get('total', 0.0):.2f} s ({stages}); "
                 f"peak memory {result.peak_memory_bytes / 2**30:.2f} GiB{cache}")
    return "\n".join(lines)


def use_demo_model(server_args: ServerArgs, sampling: SamplingParams) -> tuple[ServerArgs, SamplingParams]:
    """No --model-path (or `--model-path demo`): the demo model shipped in the package
    (sglang_diffusion.demo), with its demo-sized defaults where the user gave none. The log says
    what it can draw, and once which words of the prompt it does not know."""
    from sglang_diffusion.demo import demo_model, vocabulary_note

    demo = demo_model()
    given = "no --model-path given" if server_args.model_path is None else f"--model-path {server_args.model_path}"
    logger.warning("%s: using %s (%s)", given, demo.description, demo.path)
    prompts = sampling.prompt if isinstance(sampling.prompt, list) else [sampling.prompt or ""]
    note = vocabulary_note(" ".join(prompts))
    if note:
        logger.warning(note)
    return dataclasses.replace(server_args, model_path=str(demo.path)), sampling.resolve(demo.sampling)


def run(argv: Sequence[str]) -> int:
    parser = build_parser("sglang generate", "Generate an image or a video from a diffusers-format model.",
                          sampling=True)
    server_args, sampling = parse(parser, argv)
    configure_logging(server_args.log_level)
    if not sampling.prompt and sampling.prompt_path is None:
        raise ConfigError("prompt is required (--prompt, --prompt-path or the config key prompt)")
    from sglang_diffusion.demo import is_demo_path  # after parsing: it imports numpy, `--help` need not

    if is_demo_path(server_args.model_path):
        server_args, sampling = use_demo_model(server_args, sampling)
    settings = effective_settings(server_args.model_path, sampling)
    if settings:
        logger.info("will generate: %s", settings)
    from sglang_diffusion.runtime.engine import Engine

    with Engine(server_args) as engine:
        # Everything imported and loaded so far (torch's objects, the model) lives until exit:
        # out of the collector's reach, no collection walks it again, during the request or at
        # exit (measured: import torch alone, then exit, takes 0.8 s more with it tracked than
        # frozen on a 2-core EPYC).
        gc.freeze()
        if engine.follower:  # another machine's (or torchrun rank's) rank 0 ran the request and wrote it
            return 0
        results = engine.generate_all(sampling)
    print("\n".join(format_result(result) for result in results))
    return 0
