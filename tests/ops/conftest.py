"""Fixtures of the kernel tests (helpers.py has their plain functions)."""

import pytest

from sglang_diffusion.ops import _dispatch


@pytest.fixture
def fresh_choice_log():
    """The dispatcher logs each choice once per process: cleared around a test that checks it."""
    _dispatch.log_choice.cache_clear()
    yield
    _dispatch.log_choice.cache_clear()
