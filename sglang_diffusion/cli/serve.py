"""`sglang serve`: load the model, then serve the OpenAI-compatible HTTP API under uvicorn.

The Engine starts (model loaded) before the port opens, so the first answer of /health is
already "ok". Sampling parameters given here (--num-inference-steps, --output-path, ...) are
the defaults of every request. The output path is locked first: a second server on it refuses
to start. Ctrl-C or SIGTERM drains while the port stays open: new work gets 503 with
Retry-After and /health says shutting_down, queued image requests and the work in flight
finish, queued video jobs are marked interrupted; then the server closes, and the Engine and its
rank processes stop. A second Ctrl-C or SIGTERM stops the work in flight at its next step.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Sequence

from sglang_diffusion.cli.args import build_parser, parse
from sglang_diffusion.cli.generate import use_demo_model
from sglang_diffusion.cli.settings import effective_settings
from sglang_diffusion.errors import ConfigError
from sglang_diffusion.log import configure_logging

logger = logging.getLogger("sglang_diffusion.cli")

_PER_REQUEST = ("prompt", "prompt_path", "image_path", "output_file_name")


def run(argv: Sequence[str]) -> int:
    parser = build_parser("sglang serve", "Start the OpenAI-compatible HTTP server. Sampling parameters given "
                          "here are the defaults of every request.", sampling=True)
    server_args, defaults = parse(parser, argv)
    configure_logging(server_args.log_level)
    given = [name for name in _PER_REQUEST if getattr(defaults, name) is not None]
    if given:
        raise ConfigError(f"{', '.join(given)}: given per request to the server, not at start-up")
    if isinstance(defaults.seed, list):
        raise ConfigError(f"seed: the server's default is one seed, got {defaults.seed}")
    from sglang_diffusion.demo import is_demo_path  # after parsing: it imports numpy, `--help` need not

    if is_demo_path(server_args.model_path):  # as `sglang generate`: the demo model, its sizes the defaults
        server_args, defaults = use_demo_model(server_args, defaults)
    settings = effective_settings(server_args.model_path, defaults)
    if settings:
        logger.info("defaults of every request: %s", settings)

    import uvicorn

    from sglang_diffusion.runtime.engine import Engine
    from sglang_diffusion.server.app import create_app
    from sglang_diffusion.server.jobs import OwnerLock
    from sglang_diffusion.server.state import build_state, resolve_api_key
    from sglang_diffusion.storage.s3 import S3Storage

    # before the model loads: the storage, the key and the output path's lock
    s3 = S3Storage(server_args) if server_args.cloud_storage_type == "s3" else None
    resolve_api_key(server_args)
    lock = OwnerLock(Path(defaults.output_path).expanduser())
    try:
        engine = Engine(server_args).start()
    except BaseException:
        lock.release()
        raise
    if engine.follower:  # its ranks served the rank 0 of another machine (or torchrun rank) until it stopped
        lock.release()
        return 0
    try:
        state = build_state(server_args, defaults, engine, s3, lock)
    except BaseException:
        engine.shutdown()
        lock.release()
        raise

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            """First signal: drain with the port open, then exit; a second: stop the work in flight too."""
            if state.queue.draining.is_set():
                state.cancel_running()
                return super().handle_exit(sig, frame)
            state.queue.draining.set()
            logger.info("shutting down: draining the work in flight (a second Ctrl-C stops it)")
            threading.Thread(target=self._drain_then_exit, args=(sig, frame), name="drain", daemon=True).start()

        def _drain_then_exit(self, sig, frame) -> None:
            state.drain()
            super().handle_exit(sig, frame)

    config = uvicorn.Config(create_app(state), host=server_args.host, port=server_args.port,
                            log_level=server_args.log_level, log_config=None,  # ours: configure_logging
                            timeout_graceful_shutdown=None)
    logger.info("serving %s on http://%s:%d", server_args.model_path, server_args.host, server_args.port)
    Server(config).run()
    return 0
