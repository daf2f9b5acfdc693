"""`sglang generate`: build the engine, run the request (one per prompt and seed, batched where
they fit), write the outputs, print where they went."""

from __future__ import annotations

import dataclasses
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


DEMO_FAMILY = "wan2.1-t2v"


def use_demo_model(server_args: ServerArgs, sampling: SamplingParams) -> tuple[ServerArgs, SamplingParams]:
    """Without --model-path: the tiny random-weight demo model, built on first use and cached,
    with the small sizes it is made for (where the user gave none)."""
    from sglang_diffusion.testing import TINY_SAMPLING, cached_model

    path = cached_model(DEMO_FAMILY, "tiny")
    logger.warning("no --model-path given: using the built-in tiny %s demo model at %s "
                   "(random weights: the output is noise, but every stage runs)", DEMO_FAMILY, path)
    return dataclasses.replace(server_args, model_path=str(path)), sampling.resolve(TINY_SAMPLING[DEMO_FAMILY])


def run(argv: Sequence[str]) -> int:
    parser = build_parser("sglang generate", "Generate an image or a video from a diffusers-format model.",
                          sampling=True)
    server_args, sampling = parse(parser, argv)
    configure_logging(server_args.log_level)
    if not sampling.prompt and sampling.prompt_path is None:
        raise ConfigError("prompt is required (--prompt, --prompt-path or the config key prompt)")
    if server_args.model_path is None:
        server_args, sampling = use_demo_model(server_args, sampling)
    settings = effective_settings(server_args.model_path, sampling)
    if settings:
        logger.info("will generate: %s", settings)
    from sglang_diffusion.runtime.engine import Engine

    with Engine(server_args) as engine:
        if engine.follower:  # another machine's (or torchrun rank's) rank 0 ran the request and wrote it
            return 0
        results = engine.generate_all(sampling)
    print("\n".join(format_result(result) for result in results))
    return 0
