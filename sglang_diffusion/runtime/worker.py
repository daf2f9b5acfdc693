"""A rank: builds the pipeline, runs requests, and (rank 0) writes the outputs.

`rank_main` is the body of a rank process when the engine runs several; with one rank the
engine holds a `RankWorker` in its own process.
"""

from __future__ import annotations

import logging
import os
import resource
import signal
import time
import traceback
from dataclasses import dataclass
from typing import Callable

import torch

from sglang_diffusion.config.families import GENERIC_VIDEO_FPS
from sglang_diffusion.config.sampling_params import SamplingParams
from sglang_diffusion.config.server_args import ServerArgs
from sglang_diffusion.config.support import check_pipeline_supported
from sglang_diffusion.errors import SGLangDiffusionError
from sglang_diffusion.loader.lora import use_request_loras
from sglang_diffusion.pipelines.hooks import StepHooks
from sglang_diffusion.pipelines.registry import build_pipeline
from sglang_diffusion.platform import Platform
from sglang_diffusion.progress import Progress
from sglang_diffusion.runtime.perf import RequestPerf
from sglang_diffusion.runtime.result import GenerationResult
from sglang_diffusion.storage.local import save_outputs

logger = logging.getLogger(__name__)


def _peak_memory_bytes(platform: Platform) -> int:
    if platform.device.type == "cuda":
        return torch.cuda.max_memory_allocated(platform.device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


class RankWorker:
    def __init__(self, args: ServerArgs, rank: int = 0, world_size: int = 1):
        self.args, self.rank, self.world_size = args, rank, world_size
        self.platform = Platform.current(local_rank=rank)
        start = time.perf_counter()
        self.pipeline = build_pipeline(args, self.platform)
        check_pipeline_supported(args, self.pipeline)
        self.load_seconds = time.perf_counter() - start
        if rank == 0:
            info = self.pipeline.describe()
            logger.info("pipeline %s on %s backend (family %s), attention: %s; loaded in %.1f s on %s",
                        info["pipeline"], info["backend"], info["family"], info["attention_backend"],
                        self.load_seconds, self.platform.device)

    def describe(self) -> dict:
        return {**self.pipeline.describe(), "device": str(self.platform.device), "world_size": self.world_size}

    def run_batch(self, requests: list[SamplingParams],
                  hooks: StepHooks | None = None) -> list[GenerationResult] | None:
        """Generate requests of one batch key (`runtime.batching`) in one forward; rank 0 saves and
        returns one result per request, other ranks return None.

        Rank 0 logs the resolved request before its first step, then the steps' progress."""
        start = time.perf_counter()
        use_request_loras(self.pipeline, requests[0])  # the batch key includes the adapters
        if self.rank != 0:
            self.pipeline.generate_batch(requests, hooks)
            return None
        report = _Report(self, hooks or StepHooks())
        perf = RequestPerf.start(requests[0], self.platform.device)  # --perf-dump-path / --profile
        try:
            outs = self.pipeline.generate_batch(requests, perf.watch(report.hooks()) if perf else report.hooks())
        finally:
            report.close()
            if perf:
                perf.stop()
        results = [self._result(out, start) for out in outs]
        for result in results if perf else ():
            perf.write(result, self.describe())
        return results

    def _result(self, out, start: float) -> GenerationResult:
        """Save one request's outputs (when asked); its result."""
        p = out.params
        fps = (p.fps or GENERIC_VIDEO_FPS) if out.is_video else None
        files = []
        if p.save_output:
            save_start = time.perf_counter()
            files = save_outputs(out.frames, out.is_video, p.output_path, p.output_file_name, p.prompt,
                                 p.seed, fps or 1, p.output_quality, p.output_compression)
            out.timings["saving"] = time.perf_counter() - save_start
        out.timings["total"] = time.perf_counter() - start
        n, f, h, w, _ = out.frames.shape
        return GenerationResult(files=files, prompt=p.prompt, seed=p.seed, height=h, width=w, num_frames=f,
                                is_video=out.is_video, fps=fps, timings=out.timings, cache=out.cache,
                                peak_memory_bytes=_peak_memory_bytes(self.platform),
                                frames=list(out.frames) if p.return_frames else None, batch_size=out.batch_size)


class _Report:
    """Rank 0's account of a request in the log: one line before the first denoising step, then
    the steps' progress (a bar on a terminal, periodic lines elsewhere), besides the caller's hooks."""

    def __init__(self, worker: RankWorker, hooks: StepHooks):
        self.worker, self.caller = worker, hooks
        self.progress: Progress | None = None

    def hooks(self) -> StepHooks:
        return StepHooks(on_progress=self.on_progress, is_cancelled=self.caller.is_cancelled, on_start=self.on_start)

    def on_start(self, params: SamplingParams) -> None:
        logger.info("%s", request_line(self.worker.args.model_path, self.worker.pipeline.describe(), params))
        self.progress = Progress("denoising", params.num_inference_steps)
        self.caller.before_steps(params)

    def on_progress(self, done: int, total: int) -> None:
        if self.progress is None:  # a pipeline that reports steps without announcing them
            self.progress = Progress("denoising", total)
        self.progress.update(done, total)
        if self.caller.on_progress is not None:
            self.caller.on_progress(done, total)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()


def request_line(model: str | None, info: dict, p: SamplingParams) -> str:
    """One line naming what a request is about to run: model, pipeline, backends, the resolved
    size, frames, steps and guidance."""
    shape = (f"{p.width}x{p.height}" if p.width and p.height else "the pipeline's default size") + \
        (f", {p.num_frames} frames" if (p.num_frames or 1) > 1 else "")
    guidance = f"guidance {p.guidance_scale:g}" if p.guidance_scale is not None else "no guidance scale"
    if p.true_cfg_scale is not None:
        guidance += f", true CFG {p.true_cfg_scale:g}"
    return (f"generating: {model}, {info['pipeline']} ({info['backend']} backend, attention "
            f"{info.get('attention_backend')}), {shape}, {p.num_inference_steps} steps, {guidance}, seed {p.seed}")


@dataclass
class RankCall:
    """A control operation for every rank: `fn(pipeline, *args)` (see `Engine.call`)."""
    fn: Callable
    args: tuple

    def run(self, worker: RankWorker):
        return self.fn(worker.pipeline, *self.args)


def _error_report(e: BaseException) -> tuple[str, str, bool, str]:
    return (type(e).__name__, str(e), isinstance(e, SGLangDiffusionError), traceback.format_exc())


def next_work(rank: int, get: Callable | None):
    """Every rank: rank 0's next piece of work, `get()` there, broadcast to all (None: stop)."""
    import torch.distributed as dist

    box = [get() if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def serve_work(worker: RankWorker, work, hooks: StepHooks | None):
    """Every rank: run one broadcast piece of work, then agree on its outcome. Returns (rank 0's
    result, None) or (None, (rank, error report)) of the first rank that failed."""
    import torch.distributed as dist

    result, status = None, None
    try:
        result = work.run(worker) if isinstance(work, RankCall) else worker.run_batch(work, hooks)
    except Exception as e:  # reported to the caller; the rank stays up for the next request
        status = _error_report(e)
    statuses = [None] * worker.world_size
    dist.all_gather_object(statuses, status)
    failed = next(((r, s) for r, s in enumerate(statuses) if s is not None), None)
    return (None, failed) if failed else (result, None)


def agreed_cancel(is_set: Callable[[], bool]) -> Callable[[], bool]:
    """A cancellation check agreed by all ranks, so that none stops while the others wait for it
    in a collective."""
    from sglang_diffusion.distributed.parallel_state import any_rank

    return lambda: any_rank(is_set())


def follow(worker: RankWorker) -> None:
    """A rank other than 0, in-process (torchrun): serve rank 0's broadcast work until it stops."""
    while (item := next_work(worker.rank, None)) is not None:
        _, work = item
        serve_work(worker, work, StepHooks(is_cancelled=agreed_cancel(lambda: False)))


def init_rank(rank: int, world_size: int, init_addr: str | None) -> Platform:
    """This process's device (NCCL: one per rank) and its place in the world (`init_addr`
    host:port, or torchrun's environment when None)."""
    from sglang_diffusion.distributed.parallel_state import init_world

    platform = Platform.current(rank)
    if platform.device.type == "cuda":
        torch.cuda.set_device(platform.device)
    init_world(rank, world_size, init_addr, platform.dist_backend)
    return platform


def rank_main(rank: int, world_size: int, args: ServerArgs, init_addr: str, requests, responses,
              cancel_event) -> None:
    """Body of a rank process: load, report ready, then serve broadcast requests until None.

    Rank 0 reports per-step progress; every rank watches the engine's shared cancel event."""
    import torch.distributed as dist

    from sglang_diffusion.distributed.parallel_state import destroy_world
    from sglang_diffusion.log import configure_logging

    # Ctrl-C reaches the whole process group; the engine, not the signal, decides when ranks stop,
    # so that a server can finish (drain) the request in flight.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    configure_logging(args.log_level if rank == 0 else "warning", prefix=f"[rank {rank}] ")
    torch.set_num_threads(max(1, (os.cpu_count() or 1) * args.nnodes // world_size))
    try:
        init_rank(rank, world_size, init_addr)
        worker = RankWorker(args, rank, world_size)
        dist.barrier()
        responses.put(("ready", rank, worker.describe()))
        while (item := next_work(rank, requests.get)) is not None:
            request_id, work = item
            hooks = StepHooks(
                on_progress=(lambda done, total, rid=request_id: responses.put(("progress", rid, done, total)))
                if rank == 0 else None,
                is_cancelled=agreed_cancel(cancel_event.is_set))
            result, failed = serve_work(worker, work, hooks)
            if rank == 0:
                responses.put(("error", request_id, *failed) if failed else ("result", request_id, result))
    except BaseException as e:  # the engine turns this into RankFailedError and stops the others
        responses.put(("fatal", rank, *_error_report(e)))
        raise SystemExit(1)
    finally:
        destroy_world()
