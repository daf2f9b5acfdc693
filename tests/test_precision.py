"""The CPU precision policy (sglang_diffusion/precision.py, platform.py): decided from measured
rates, here mocked both ways (an AMX-like CPU where bf16 is fast, an AVX2-like one where it is
slow), and the measurement itself, cached on disk."""

import logging

import pytest
import torch

from sglang_diffusion import precision
from sglang_diffusion.platform import Platform

# A Xeon with AMX (issue 15's figures) and an EPYC with AVX2 only, GFLOP/s per thread.
FAST_BF16 = precision.Rates({"matmul": {"fp32": 199.0, "bf16": 335.0}, "attention": {"fp32": 90.0, "bf16": 150.0}})
SLOW_BF16 = precision.Rates({"matmul": {"fp32": 77.2, "bf16": 1.3}, "attention": {"fp32": 50.5, "bf16": 51.7}})
SLIGHTLY_FASTER = precision.Rates({"matmul": {"fp32": 100.0, "bf16": 110.0}, "attention": {"fp32": 50.0, "bf16": 60.0}})
CPU = Platform(torch.device("cpu"))


@pytest.fixture(autouse=True)
def measured_default(monkeypatch):
    """The measured policy, not the suite's pinned fp32 default (tests/conftest.py)."""
    monkeypatch.delenv(precision.FORCE_ENV, raising=False)


@pytest.fixture
def rates(monkeypatch):
    def use(r: precision.Rates):
        monkeypatch.setattr(precision, "cpu_rates", lambda cache_dir=None: r)

    return use


def test_fast_bf16_runs_as_requested_and_is_the_default(rates, caplog):
    rates(FAST_BF16)
    with caplog.at_level(logging.INFO, logger="sglang_diffusion.platform"):
        assert CPU.usable_dtype(torch.bfloat16, "transformer") == torch.bfloat16
        assert CPU.default_precision == "bf16"
    assert "transformer: bfloat16 on the CPU (requested; measured bf16 at 1.67x fp32" in caplog.text
    assert "matmul 335.0 vs 199.0, attention 150.0 vs 90.0 GFLOP/s per thread" in caplog.text
    assert "default precision on the CPU: bf16 (bf16 is clearly faster than fp32 here" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_slow_bf16_maps_to_fp32_with_a_warning_giving_both_rates(rates, caplog):
    rates(SLOW_BF16)
    with caplog.at_level(logging.INFO, logger="sglang_diffusion.platform"):
        assert CPU.usable_dtype(torch.bfloat16, "transformer") == torch.float32
        assert CPU.default_precision == "fp32"
    warning = next(r for r in caplog.records if r.levelno == logging.WARNING).getMessage()
    assert warning.startswith("transformer: bfloat16 requested, running in fp32 on the CPU (bf16 is slower")
    assert "matmul 1.3 vs 77.2" in warning and "attention 51.7 vs 50.5" in warning
    assert "default precision on the CPU: fp32 (bf16 is not 1.25x fp32 here" in caplog.text


def test_slightly_faster_bf16_runs_when_asked_but_is_not_the_default(rates):
    rates(SLIGHTLY_FASTER)  # 1.1x: the slower kernel's ratio counts
    assert CPU.usable_dtype(torch.bfloat16, "transformer") == torch.bfloat16
    assert CPU.default_precision == "fp32"


@pytest.mark.parametrize("value", ["fp32", "bf16", " BF16 "])
def test_the_environment_sets_the_default_without_measuring(monkeypatch, caplog, value):
    monkeypatch.setattr(precision, "cpu_rates", lambda cache_dir=None: pytest.fail("measured"))
    monkeypatch.setenv(precision.FORCE_ENV, value)
    with caplog.at_level(logging.INFO, logger="sglang_diffusion.platform"):
        assert CPU.default_precision == value.strip().lower()
    assert f"default precision on the CPU: {value.strip().lower()} (set by SGLD_CPU_PRECISION)" in caplog.text


def test_a_bad_environment_value_names_the_variable_and_the_choices(monkeypatch):
    from sglang_diffusion.errors import ConfigError

    monkeypatch.setenv(precision.FORCE_ENV, "fp8")
    with pytest.raises(ConfigError, match=r"SGLD_CPU_PRECISION='fp8': the CPU default precision is fp32 or bf16"):
        CPU.default_precision


def test_unmeasured_fp16_runs_as_fp32_and_says_why(rates, caplog):
    rates(FAST_BF16)  # no fp16 entry: the CPU has no AVX-512-FP16
    with caplog.at_level(logging.WARNING, logger="sglang_diffusion.platform"):
        assert CPU.usable_dtype(torch.float16, "vae") == torch.float32
    assert "vae: float16 requested, running in fp32 on the CPU (fp16 is slower than fp32 here, fp16 not " \
           "measured (no AVX-512-FP16 on this CPU))" in caplog.text


def test_fp32_and_gpu_dtypes_are_never_measured(monkeypatch):
    monkeypatch.setattr(precision, "cpu_rates", lambda cache_dir=None: pytest.fail("measured"))
    assert CPU.usable_dtype(torch.float32, "vae") == torch.float32
    assert Platform(torch.device("cuda", 0)).usable_dtype(torch.bfloat16, "transformer") == torch.bfloat16
    assert Platform(torch.device("cuda", 0)).default_precision == "bf16"


def test_rates_are_measured_once_and_then_read_from_the_cache(monkeypatch, tmp_path):
    monkeypatch.setattr(precision, "MATMUL_N", 32)
    monkeypatch.setattr(precision, "ATTENTION_SHAPE", (1, 2, 32, 16))
    monkeypatch.setattr(precision, "ROUNDS", 1)
    calls = []
    measure = precision.measure_rates
    monkeypatch.setattr(precision, "measure_rates", lambda: calls.append(1) or measure())
    precision._cached_rates.cache_clear()
    try:
        first = precision.cpu_rates(tmp_path)
        assert set(first.gflops) == {"matmul", "attention"}
        assert all(r["fp32"] > 0 and r["bf16"] > 0 for r in first.gflops.values())
        assert (tmp_path / precision.CACHE_FILE).is_file()
        precision._cached_rates.cache_clear()  # a new process: the file answers
        assert precision.cpu_rates(tmp_path) == first and len(calls) == 1
    finally:
        precision._cached_rates.cache_clear()


@pytest.mark.slow
def test_generate_with_bf16_runs_the_dit_in_bf16_where_measured_fast(tiny_model, tmp_path):
    """`sglang generate --dit-precision bf16` end to end, on a CPU whose cached rates say bf16 is
    fast (written into a fresh HOME's cache: this CPU's real rates would map it to fp32). bf16 is
    slow here, not wrong, so the run completes and the log names the rates it decided from."""
    import json
    import os

    from sglang_diffusion import tuning_cache
    from tests.conftest import run_cli

    cache = tmp_path / "home" / ".cache" / "sglang_diffusion" / precision.CACHE_FILE
    cache.parent.mkdir(parents=True)
    key = tuning_cache.versions_key(torch.device("cpu"))
    threads = f"x{torch.get_num_threads()} threads"
    keys = {key.replace(threads, f"x{n} threads") for n in range(1, (os.cpu_count() or 1) + 1)}
    cache.write_text(json.dumps({k: FAST_BF16.gflops for k in keys}))
    proc = run_cli("generate", "--model-path", tiny_model("wan2.1-t2v"), "--prompt", "a fox", "--height", 32,
                   "--width", 32, "--num-frames", 5, "--num-inference-steps", 1, "--dit-precision", "bf16",
                   "--output-path", tmp_path, env={"HOME": str(tmp_path / "home")})
    assert proc.returncode == 0, proc.stderr
    assert "transformer: bfloat16 on the CPU (requested; measured bf16 at 1.67x fp32: matmul 335.0 vs 199.0" \
           in proc.stderr
    assert "running in fp32" not in proc.stderr
