"""The prompt cleaning of the Wan-family text encoding (diffusers' Wan pipelines' `prompt_clean`:
ftfy, HTML unescaping, whitespace collapsing), and its shortcut: printable ASCII without "&"
skips ftfy, which must leave such text as it is."""

from __future__ import annotations

import html
import random
import re
import string

import pytest

from sglang_diffusion.pipelines.stages.text_encoding import clean_prompt

ftfy = pytest.importorskip("ftfy")

TRICKY = ["a red circle moving right on a blue background", "  two   spaces  ", "quotes ' \" ` and -- dashes...",
          "<b>bold</b> and &lt;tag&gt;", "caf\u00e9", "caf\u00c3\u00a9 (mojibake)", "\u201ccurly\u201d quotes",
          "line\r\nbreaks\tand tabs", "\ufb01ne ligature", "\uff21 fullwidth", "&amp;amp; twice", "a\x00b", "\x1b[31mred"]


def _diffusers_clean(text: str) -> str:
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


@pytest.mark.parametrize("text", TRICKY)
def test_cleans_as_diffusers(text):
    assert clean_prompt(text) == _diffusers_clean(text)


def test_ftfy_leaves_printable_ascii_without_ampersands_as_it_is():
    rng = random.Random(0)
    alphabet = [c for c in string.printable if c.isprintable() and c != "&"]
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40)))
        assert ftfy.fix_text(text) == text, repr(text)
        assert clean_prompt(text) == _diffusers_clean(text)
