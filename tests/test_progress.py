"""sglang_diffusion.progress: a tqdm bar on a terminal, periodic log lines anywhere else."""

import io
import logging

import pytest

from sglang_diffusion import progress as progress_mod
from sglang_diffusion.progress import Progress


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(progress_mod.time, "monotonic", clock)
    return clock


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_off_a_terminal_logs_at_most_every_interval_with_eta_and_always_the_last_step(clock, caplog):
    with caplog.at_level(logging.INFO, logger="sglang_diffusion.progress"):
        with Progress("denoising", 10, interval_s=5.0, stream=io.StringIO()) as p:
            for step in range(1, 11):
                clock.now += 2.0  # 2 s a step: a line every third step, then the last
                p.update(step, 10)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["denoising: step 3/10, 6.0 s, ETA 14.0 s", "denoising: step 6/10, 12.0 s, ETA 8.0 s",
                     "denoising: step 9/10, 18.0 s, ETA 2.0 s", "denoising: step 10/10, 20.0 s"]


def test_long_runs_read_in_minutes(clock, caplog):
    with caplog.at_level(logging.INFO, logger="sglang_diffusion.progress"):
        p = Progress("denoising", 30, stream=io.StringIO())
        clock.now += 200.0
        p.update(10, 30)
    assert caplog.records[-1].getMessage() == "denoising: step 10/30, 3 min 20 s, ETA 6 min 40 s"


def test_on_a_terminal_draws_a_bar_and_logs_nothing(caplog):
    stream = Terminal()
    with caplog.at_level(logging.INFO, logger="sglang_diffusion.progress"):
        with Progress("denoising", 4, stream=stream) as p:
            for step in range(1, 5):
                p.update(step, 4)
    assert not caplog.records
    assert "denoising" in stream.getvalue() and "4/4" in stream.getvalue()


def test_total_given_by_the_first_update(clock, caplog):
    with caplog.at_level(logging.INFO, logger="sglang_diffusion.progress"):
        p = Progress("vae tiles", unit="tile", stream=io.StringIO())
        clock.now += 1.0
        p.update(2, 2)
    assert caplog.records[-1].getMessage() == "vae tiles: tile 2/2, 1.0 s"
