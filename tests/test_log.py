"""sglang_diffusion.log: one format for our loggers and uvicorn's; the access log without polls."""

import logging
import re

import pytest

from sglang_diffusion import log


class Stderr:
    def __init__(self, capsys):
        self.capsys = capsys

    def getvalue(self) -> str:
        return self.capsys.readouterr().err


@pytest.fixture
def stderr(capsys):
    yield Stderr(capsys)
    for name in ("sglang_diffusion", "uvicorn"):  # back to what the test session had
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").filters[:] = []


def access(path: str, status: int = 200, method: str = "GET") -> None:
    logging.getLogger("uvicorn.access").info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", method, path, "1.1",
                                             status)


LINE = re.compile(r"^\d\d:\d\d:\d\d (INFO|WARNING|DEBUG) [\w.]+: .+$")


def test_uvicorn_lines_take_our_format(stderr):
    log.configure_logging("info")
    logging.getLogger("uvicorn.error").info("Uvicorn running on %s", "http://127.0.0.1:1")
    logging.getLogger("sglang_diffusion.cli").info("serving")
    access("/v1/images/generations", method="POST")
    lines = stderr.getvalue().splitlines()
    assert len(lines) == 3 and all(LINE.match(line) for line in lines), lines
    assert lines[0].endswith("uvicorn.error: Uvicorn running on http://127.0.0.1:1")


def test_access_log_leaves_out_polls_and_health_but_not_work_or_errors(stderr):
    log.configure_logging("info")
    access("/health")
    access("/v1/videos/video_abc123")
    access("/v1/images/progress/abcdefgh12")
    access("/v1/videos/video_abc123/content")
    access("/v1/videos", method="POST")
    access("/v1/videos/video_missing", status=404)
    text = stderr.getvalue()
    assert "/health" not in text and '"GET /v1/videos/video_abc123 HTTP' not in text and "progress" not in text
    assert "/v1/videos/video_abc123/content" in text and '"POST /v1/videos HTTP' in text
    assert "video_missing" in text


def test_debug_level_logs_every_request(stderr):
    log.configure_logging("debug")
    access("/health")
    access("/v1/videos/video_abc123")
    text = stderr.getvalue()
    assert "/health" in text and "video_abc123" in text


def test_kernel_choices_are_debug_lines(stderr):
    from sglang_diffusion.ops import _dispatch

    log.configure_logging("info")
    _dispatch.log_choice("an_op_of_this_test", "torch", "info level")
    assert "an_op_of_this_test" not in stderr.getvalue()
    log.configure_logging("debug")
    _dispatch.log_choice("an_op_of_this_test", "native", "debug level")
    assert "an_op_of_this_test: native (debug level)" in stderr.getvalue()
