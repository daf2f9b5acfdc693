"""--attention-backend-config: the three spellings, and the checks against a backend's options."""

import json

import pytest

from sglang_diffusion.attention.config import Option, parse_backend_config, validate_options
from sglang_diffusion.errors import ConfigError

DECLARED = {
    "smooth_k": Option(True, "bool"),
    "block_q": Option(128, "int"),
    "qk_quant_gran": Option("per_block", "str", choices=("per_block", "per_token")),
}


def test_parses_key_value_pairs_with_typed_values():
    assert parse_backend_config("smooth_k=false, block_q=64,qk_quant_gran=per_token") == {
        "smooth_k": False, "block_q": 64, "qk_quant_gran": "per_token"}


def test_parses_a_json_string():
    assert parse_backend_config('{"block_q": 32, "smooth_k": true}') == {"block_q": 32, "smooth_k": True}


@pytest.mark.parametrize("suffix, text", [(".json", json.dumps({"block_q": 16})), (".yaml", "block_q: 16\n")])
def test_parses_a_file(tmp_path, suffix, text):
    path = tmp_path / f"attn{suffix}"
    path.write_text(text)
    assert parse_backend_config(str(path)) == {"block_q": 16}


@pytest.mark.parametrize("text", [None, "", "  "])
def test_empty_is_no_options(text):
    assert parse_backend_config(text) == {}


@pytest.mark.parametrize(
    "text, message",
    [("{not json", "not valid JSON"), ("no_such_file.yaml", "neither a file"), ("a=1,b", "k=v pairs"),
     ("[1, 2]", "neither a file")],
)
def test_rejects_malformed_text(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_backend_config(text)


def test_validate_fills_defaults_and_coerces():
    assert validate_options("x", DECLARED, {"block_q": "64", "smooth_k": "off"}) == {
        "smooth_k": False, "block_q": 64, "qk_quant_gran": "per_block"}


def test_validate_rejects_unknown_key_listing_accepted_ones():
    with pytest.raises(ConfigError, match=r"unknown option\(s\) blok_q for attention backend 'x' "
                       r"\(it accepts: block_q, qk_quant_gran, smooth_k\)"):
        validate_options("x", DECLARED, {"blok_q": 1})


@pytest.mark.parametrize(
    "options, message",
    [({"block_q": 1.5}, "block_q must be an integer"), ({"smooth_k": "maybe"}, "smooth_k must be true or false"),
     ({"qk_quant_gran": "per_warp"}, "qk_quant_gran must be one of per_block, per_token")],
)
def test_validate_rejects_bad_values(options, message):
    with pytest.raises(ConfigError, match=message):
        validate_options("x", DECLARED, options)
