"""Batching: which requests can share a forward, and the thread that gathers them.

Two requests share a batch when every SamplingParams field that shapes the forward is equal
(`batch_key`): model settings, size, frames, steps, guidance, scheduler options, adapters, input
image, and whether there is a negative prompt at all (it decides true CFG). What may differ is
`PER_REQUEST_FIELDS`: prompt, negative prompt, seed, outputs per prompt and where the outputs go.
A field added to SamplingParams is therefore in the key unless it is named here, so a new option
can never let two requests that differ in it share a forward. A request with TeaCache runs alone:
its skip decisions would be taken over the whole batch, not over its own latents.

`Batcher` gathers requests submitted from several threads: the oldest waiting request opens a
batch, which takes the compatible requests waiting behind it (in arrival order) up to
`max_outputs` outputs, waiting at most `delay_s` from the opener's arrival for company; requests
of other keys are served next, in arrival order, so none waits on an incompatible one past the
delay (beyond the time the engine is busy anyway).

`expand_requests` turns one request with several prompts (`prompt` list, `prompt_path`) and seeds
into one request per (prompt, seed), each making `num_outputs_per_prompt` outputs.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from sglang_diffusion.config.sampling_params import SamplingParams
from sglang_diffusion.errors import ConfigError, RequestCancelled

logger = logging.getLogger(__name__)

PER_REQUEST_FIELDS = frozenset({"prompt", "negative_prompt", "seed", "num_outputs_per_prompt", "output_path",
                                "output_file_name", "save_output", "return_frames"})


def batch_key(params: SamplingParams) -> tuple:
    """Equal for requests that can share a forward."""
    if params.enable_teacache:
        return ("alone", id(params))
    values = [(f.name, _hashable(getattr(params, f.name))) for f in dataclasses.fields(params)
              if f.name not in PER_REQUEST_FIELDS]
    return (*values, ("negative_prompt", params.negative_prompt is None))


def _hashable(value):
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    return value


def plan_batches(requests: list[SamplingParams], max_outputs: int) -> list[list[int]]:
    """Indices of `requests` in batches: compatible requests together, in order, each batch at
    most `max_outputs` outputs (a request that alone makes more runs by itself)."""
    batches: list[list[int]] = []
    open_batch: dict[tuple, list[int]] = {}  # key -> the batch still taking requests
    for i, params in enumerate(requests):
        key, n = batch_key(params), params.num_outputs_per_prompt
        batch = open_batch.get(key)
        if batch is None or sum(requests[j].num_outputs_per_prompt for j in batch) + n > max_outputs:
            batch = open_batch[key] = []
            batches.append(batch)
        batch.append(i)
    return batches


def expand_requests(params: SamplingParams) -> list[SamplingParams]:
    """One request per (prompt, seed), prompts first: `prompt` (one or a list), then the lines of
    `prompt_path`. With several requests a given `output_file_name` gets the request's index
    (`name_0.png`, `name_1.png`, ...), so that no output overwrites another."""
    prompts = [params.prompt] if isinstance(params.prompt, str) else list(params.prompt or [])
    if params.prompt_path is not None:
        prompts += read_prompt_file(params.prompt_path)
    seeds = params.seed if isinstance(params.seed, list) else [params.seed]
    pairs = [(prompt, seed) for prompt in prompts for seed in seeds] or [(None, seeds[0])]
    name = params.output_file_name
    out = []
    for i, (prompt, seed) in enumerate(pairs):
        file_name = name
        if name is not None and len(pairs) > 1:
            stem, ext = Path(name).stem, Path(name).suffix
            file_name = f"{stem}_{i}{ext}"
        out.append(dataclasses.replace(params, prompt=prompt, seed=seed, prompt_path=None, output_file_name=file_name))
    return out


def read_prompt_file(path: str) -> list[str]:
    """The non-empty lines of a prompt file, stripped."""
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"prompt_path {path!r}: cannot read it ({e.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"prompt_path {path!r}: not a UTF-8 text file") from None
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise ConfigError(f"prompt_path {path!r} has no prompt (one per line)")
    return prompts


@dataclass
class Pending:
    """A request waiting in the Batcher, and how to reach its caller."""

    params: SamplingParams
    on_progress: Callable[[int, int], None] | None
    cancel: threading.Event | None
    future: Future = field(default_factory=Future)
    key: tuple = ()
    arrival: float = field(default_factory=time.monotonic)

    @property
    def outputs(self) -> int:
        return self.params.num_outputs_per_prompt

    def cancelled(self) -> bool:
        return self.cancel is not None and self.cancel.is_set()


class Batcher:
    """`run(batch)` runs a list of Pending (on this class's thread) and settles their futures."""

    def __init__(self, run: Callable[[list[Pending]], None], max_outputs: int, delay_s: float):
        self._run, self.max_outputs, self.delay_s = run, max_outputs, delay_s
        self._pending: list[Pending] = []
        self._wake = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="batcher", daemon=True)
        self._thread.start()

    def submit(self, params: SamplingParams, on_progress=None, cancel: threading.Event | None = None) -> Future:
        item = Pending(params, on_progress, cancel, key=batch_key(params))
        with self._wake:
            if self._stopped:
                raise RuntimeError("the batcher has stopped")
            self._pending.append(item)
            self._wake.notify()
        return item.future

    def _company(self, head: Pending) -> list[Pending]:
        """The batch `head` opens: the compatible waiting requests that fit, in arrival order."""
        batch, outputs = [head], head.outputs
        for item in self._pending[1:]:
            if item.key == head.key and outputs + item.outputs <= self.max_outputs:
                batch.append(item)
                outputs += item.outputs
        return batch

    def _next_batch(self) -> list[Pending] | None:
        with self._wake:
            while not self._pending and not self._stopped:
                self._wake.wait()
            if not self._pending:
                return None
            head = self._pending[0]
            deadline = head.arrival + self.delay_s
            while True:
                batch = self._company(head)
                left = deadline - time.monotonic()
                if sum(i.outputs for i in batch) >= self.max_outputs or left <= 0 or self._stopped:
                    break
                self._wake.wait(left)
            for item in batch:
                self._pending.remove(item)
            return batch

    def _loop(self) -> None:
        while (batch := self._next_batch()) is not None:
            live = []
            for item in batch:
                if item.cancelled():  # its caller gave up while it waited
                    item.future.set_exception(RequestCancelled("cancelled before it started"))
                elif item.future.set_running_or_notify_cancel():
                    live.append(item)
            if live:
                try:
                    self._run(live)
                except BaseException as e:  # run settles the futures; this is a last resort
                    for item in live:
                        if not item.future.done():
                            item.future.set_exception(e)

    def stop(self) -> None:
        """Run what is waiting, then stop the thread (waiting for it, unless called from it: an
        engine that fails inside a batch shuts itself down from this thread)."""
        with self._wake:
            self._stopped = True
            self._wake.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join()
