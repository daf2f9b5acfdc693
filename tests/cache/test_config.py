"""The SGLANG_CACHE_DIT_* variables, the cache_dit_params keys and the --cache-dit-config file:
each parses, the second expert falls back to the first, and a bad value or key fails naming it."""

from __future__ import annotations

import json

import pytest

from sglang_diffusion.config.cache import (ENV_NAMES, SECONDARY_KEYS, CacheDitParams, DBCacheParams,
                                           apply_cache_dit_mapping, cache_dit_params_from_env, load_cache_dit_file)
from sglang_diffusion.config.loading import load_config_file
from sglang_diffusion.config.server_args import ServerArgs
from sglang_diffusion.errors import ConfigError

ENV = {"FN": "2", "BN": "1", "WARMUP": "6", "RDT": "0.12", "MC": "-1", "TAYLORSEER": "true", "TS_ORDER": "2",
       "SCM_PRESET": "Medium", "SCM_POLICY": "static", "SCM_COMPUTE_BINS": "4, 2", "SCM_CACHE_BINS": "3"}
WANT = DBCacheParams(Fn_compute_blocks=2, Bn_compute_blocks=1, max_warmup_steps=6, residual_diff_threshold=0.12,
                     max_continuous_cached_steps=-1, enable_taylorseer=True, taylorseer_order=2, scm_preset="medium",
                     scm_compute_bins=(4, 2), scm_cache_bins=(3,), scm_policy="static")


@pytest.fixture
def clean_env(monkeypatch):
    for name in ENV_NAMES.values():
        monkeypatch.delenv(f"SGLANG_CACHE_DIT_{name}", raising=False)
        monkeypatch.delenv(f"SGLANG_CACHE_DIT_SECONDARY_{name}", raising=False)
    return monkeypatch


def test_defaults_are_sglangs(clean_env):
    p = cache_dit_params_from_env()
    assert p.primary == DBCacheParams() == p.secondary
    assert (p.primary.Fn_compute_blocks, p.primary.Bn_compute_blocks, p.primary.max_warmup_steps,
            p.primary.residual_diff_threshold, p.primary.max_continuous_cached_steps) == (1, 0, 4, 0.24, 3)


def test_every_variable_reaches_its_key_and_the_second_expert_falls_back(clean_env):
    for name, value in ENV.items():
        clean_env.setenv(f"SGLANG_CACHE_DIT_{name}", value)
    clean_env.setenv("SGLANG_CACHE_DIT_SECONDARY_RDT", "0.05")
    clean_env.setenv("SGLANG_CACHE_DIT_SECONDARY_FN", "3")
    args = ServerArgs()
    assert args.cache_dit_params.primary == WANT
    assert args.cache_dit_params.secondary == DBCacheParams(**{**WANT.__dict__, "residual_diff_threshold": 0.05,
                                                                "Fn_compute_blocks": 3})
    assert {"Fn_compute_blocks", "residual_diff_threshold"} <= set(SECONDARY_KEYS)


@pytest.mark.parametrize("name,value,message", [
    ("RDT", "fast", "SGLANG_CACHE_DIT_RDT: expected a number, got 'fast'"),
    ("FN", "0", "Fn_compute_blocks must be at least 1"),
    ("FN", "1.5", "SGLANG_CACHE_DIT_FN: expected an integer"),
    ("TAYLORSEER", "maybe", "SGLANG_CACHE_DIT_TAYLORSEER: expected true or false"),
    ("TS_ORDER", "3", "taylorseer_order must be 1 or 2"),
    ("SCM_PRESET", "turbo", "scm_preset must be one of none, slow, medium, fast, ultra"),
    ("SCM_POLICY", "lazy", "scm_policy must be one of dynamic, static"),
    ("SCM_COMPUTE_BINS", "4,x", "SGLANG_CACHE_DIT_SCM_COMPUTE_BINS: expected comma-separated positive step counts"),
    ("SCM_COMPUTE_BINS", "4,2", "scm_compute_bins and scm_cache_bins go together"),
    ("MC", "-2", "max_continuous_cached_steps must be -1"),
    ("SECONDARY_BN", "-1", "(second expert): Bn_compute_blocks must not be negative"),
])
def test_a_bad_variable_is_a_config_error_naming_it(clean_env, name, value, message):
    clean_env.setenv(f"SGLANG_CACHE_DIT_{name}", value)
    with pytest.raises(ConfigError) as e:
        ServerArgs()
    assert message in str(e.value)


def test_config_file_keys_override_the_variables(clean_env, tmp_path):
    clean_env.setenv("SGLANG_CACHE_DIT_RDT", "0.3")
    clean_env.setenv("SGLANG_CACHE_DIT_WARMUP", "2")
    path = tmp_path / "cache.yaml"
    path.write_text("cache_config:\n  residual_diff_threshold: 0.1\n  scm_compute_bins: [3, 1]\n"
                    "  scm_cache_bins: [2]\nsecondary_cache_config:\n  Fn_compute_blocks: 2\n")
    p = load_cache_dit_file(str(path), cache_dit_params_from_env())
    assert (p.primary.residual_diff_threshold, p.primary.max_warmup_steps, p.primary.scm_compute_bins) == (0.1, 2, (3, 1))
    assert p.secondary.Fn_compute_blocks == 2 and p.secondary.residual_diff_threshold == 0.1
    flat = tmp_path / "flat.json"
    flat.write_text(json.dumps({"Bn_compute_blocks": 1}))
    assert load_cache_dit_file(str(flat), CacheDitParams()).primary.Bn_compute_blocks == 1


@pytest.mark.parametrize("text,message", [
    ("cache_config:\n  residual_diff_treshold: 0.1\n", "unknown key 'residual_diff_treshold'; did you mean "
                                                       "'residual_diff_threshold'?"),
    ("cache_config:\n  Fn_compute_blocks: eight\n", "cache_config.Fn_compute_blocks: expected an integer"),
    ("cache_config: {}\nparallelism_config: {}\n", "unknown key 'parallelism_config' beside cache_config"),
    ("- 1\n", "expected a mapping of cache options"),
    ("cache_config: [1\n", "not valid YAML"),
])
def test_a_bad_config_file_is_a_config_error_naming_file_and_key(tmp_path, text, message):
    path = tmp_path / "cache.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_cache_dit_file(str(path), CacheDitParams())
    assert str(path) in str(e.value) and message in str(e.value)


def test_cache_dit_params_is_a_config_key_and_a_flag(clean_env, tmp_path):
    from sglang_diffusion.cli.args import build_parser, parse

    config = tmp_path / "run.yaml"
    config.write_text("cache_dit_params:\n  cache_config:\n    max_warmup_steps: 7\n")
    values = load_config_file(config)
    assert values["cache_dit_params"].primary.max_warmup_steps == 7
    server, _ = parse(build_parser("sglang generate", "", sampling=True),
                      ["--cache-dit-params", "Fn_compute_blocks=2,residual_diff_threshold=0.1", "--prompt", "x"])
    assert (server.cache_dit_params.primary.Fn_compute_blocks, server.cache_dit_params.primary.residual_diff_threshold) \
        == (2, 0.1)
    with pytest.raises(ConfigError, match="unknown key 'Fn'"):
        apply_cache_dit_mapping({"Fn": 1}, CacheDitParams(), "test")
