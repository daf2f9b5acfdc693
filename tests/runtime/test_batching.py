"""Batching without a model: which requests share a batch, how several prompts and seeds become
requests, and the Batcher's timing (the delay bound, incompatible requests not held back)."""

from __future__ import annotations

import threading
import time

import pytest

from sglang_diffusion.config.sampling_params import SamplingParams
from sglang_diffusion.errors import ConfigError, RequestCancelled
from sglang_diffusion.runtime.batching import Batcher, batch_key, expand_requests, plan_batches

DELAY_S = 0.3


def test_requests_differing_only_per_request_share_a_key_and_others_do_not():
    base = SamplingParams(prompt="a", seed=1, height=64, width=64, negative_prompt="x")
    same = SamplingParams(prompt="b", seed=2, height=64, width=64, negative_prompt="y", num_outputs_per_prompt=3,
                          output_file_name="b.png", return_frames=True)
    assert batch_key(base) == batch_key(same)
    for other in (SamplingParams(prompt="a", height=128, width=64, negative_prompt="x"),
                  SamplingParams(prompt="a", height=64, width=64, negative_prompt="x", num_inference_steps=3),
                  SamplingParams(prompt="a", height=64, width=64, negative_prompt="x", guidance_scale=2.0),
                  SamplingParams(prompt="a", height=64, width=64),  # no negative prompt: true CFG off
                  SamplingParams(prompt="a", height=64, width=64, negative_prompt="x", enable_teacache=True)):
        assert batch_key(other) != batch_key(base)


def test_batches_are_planned_by_key_in_order_up_to_the_output_bound():
    small, large = dict(height=64, width=64), dict(height=128, width=128)
    requests = [SamplingParams(prompt="p", **small), SamplingParams(prompt="q", **large),
                SamplingParams(prompt="r", num_outputs_per_prompt=2, **small), SamplingParams(prompt="s", **small),
                SamplingParams(prompt="t", num_outputs_per_prompt=5, **small)]
    assert plan_batches(requests, max_outputs=3) == [[0, 2], [1], [3], [4]]
    assert plan_batches(requests, max_outputs=1) == [[0], [1], [2], [3], [4]]


def test_several_prompts_and_seeds_make_one_request_each_with_distinct_file_names(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("from the file\n\n  another  \n")
    params = SamplingParams(prompt=["a", "b"], prompt_path=str(prompts), seed=[1, 2], output_file_name="x.png")
    requests = expand_requests(params)
    assert [(r.prompt, r.seed) for r in requests] == [
        ("a", 1), ("a", 2), ("b", 1), ("b", 2), ("from the file", 1), ("from the file", 2), ("another", 1),
        ("another", 2)]
    assert len({r.output_file_name for r in requests}) == 8 and requests[0].output_file_name == "x_0.png"
    assert expand_requests(SamplingParams(prompt="a", output_file_name="x.png"))[0].output_file_name == "x.png"
    with pytest.raises(ConfigError, match="prompt_path .*cannot read"):
        expand_requests(SamplingParams(prompt_path=str(tmp_path / "missing.txt")))
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(ConfigError, match="has no prompt"):
        expand_requests(SamplingParams(prompt_path=str(tmp_path / "empty.txt")))
    with pytest.raises(ConfigError, match="at least one"):
        SamplingParams(seed=[])


class _Recorder:
    """A Batcher's run function that records each batch and when it started."""

    def __init__(self, seconds: float = 0.0):
        self.batches: list[tuple[float, list[str]]] = []
        self.seconds = seconds

    def __call__(self, batch) -> None:
        self.batches.append((time.monotonic(), [item.params.prompt for item in batch]))
        time.sleep(self.seconds)
        for item in batch:
            item.future.set_result(item.params.prompt)


def test_batcher_waits_at_most_the_delay_and_not_at_all_when_full():
    run = _Recorder()
    batcher = Batcher(run, max_outputs=3, delay_s=DELAY_S)
    start = time.monotonic()
    futures = [batcher.submit(SamplingParams(prompt=p)) for p in ("a", "b")]
    assert [f.result(timeout=5) for f in futures] == ["a", "b"]
    waited = run.batches[0][0] - start
    assert run.batches[0][1] == ["a", "b"] and DELAY_S * 0.9 <= waited < DELAY_S + 0.25
    start = time.monotonic()
    futures = [batcher.submit(SamplingParams(prompt=p)) for p in ("c", "d", "e")]  # full: runs at once
    assert [f.result(timeout=5) for f in futures] == ["c", "d", "e"]
    assert run.batches[1][0] - start < DELAY_S / 2
    batcher.stop()


def test_incompatible_requests_do_not_wait_on_each_other_past_the_delay():
    run = _Recorder(seconds=0.2)
    batcher = Batcher(run, max_outputs=4, delay_s=DELAY_S)
    start = time.monotonic()
    small = batcher.submit(SamplingParams(prompt="small", height=64))
    large = batcher.submit(SamplingParams(prompt="large", height=128))
    small.result(timeout=5), large.result(timeout=5)
    (t_small, first), (t_large, second) = run.batches
    assert first == ["small"] and second == ["large"]
    assert t_small - start < DELAY_S + 0.25
    assert t_large - t_small < 0.2 + 0.1  # right after the first batch ran: its own delay had passed
    batcher.stop()


def test_a_request_cancelled_while_waiting_never_runs():
    run = _Recorder()
    batcher = Batcher(run, max_outputs=4, delay_s=DELAY_S)
    cancel = threading.Event()
    gone = batcher.submit(SamplingParams(prompt="gone"), cancel=cancel)
    kept = batcher.submit(SamplingParams(prompt="kept"))
    cancel.set()
    assert kept.result(timeout=5) == "kept"
    with pytest.raises(RequestCancelled):
        gone.result(timeout=5)
    assert run.batches[0][1] == ["kept"]
    batcher.stop()


def test_a_batch_that_stops_its_batcher_settles_and_the_rest_still_runs():
    """An engine that fails inside a batch shuts down (stopping the batcher) from the batcher's thread."""
    holder, ran, both_in = {}, [], threading.Event()

    def run(batch) -> None:
        ran.append([item.params.prompt for item in batch])
        if len(ran) == 1:
            both_in.wait(5)
            holder["batcher"].stop()
        for item in batch:
            item.future.set_result(item.params.prompt)

    holder["batcher"] = batcher = Batcher(run, max_outputs=1, delay_s=0.0)
    first, second = batcher.submit(SamplingParams(prompt="a")), batcher.submit(SamplingParams(prompt="b"))
    both_in.set()
    assert (first.result(timeout=5), second.result(timeout=5)) == ("a", "b")
    batcher.stop()
    assert ran == [["a"], ["b"]]
    with pytest.raises(RuntimeError, match="stopped"):
        batcher.submit(SamplingParams(prompt="c"))
