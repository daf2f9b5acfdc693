"""select_attention_backend: explicit names, refusals with reasons, auto's tuning and its disk
cache, options reaching the backend, and every backend against the reference on this CPU."""

import json
import logging

import pytest
import torch
import torch.nn.functional as F

from sglang_diffusion.attention import selector
from sglang_diffusion.attention.selector import resolve_backend_name, select_attention_backend
from sglang_diffusion.errors import ConfigError
from sglang_diffusion.ops import _native
from sglang_diffusion.ops.attention import attention_reference
from tests.ops.helpers import randn, requires_native


@pytest.fixture(autouse=True)
def fresh_selection():
    selector._select.cache_clear()
    yield
    selector._select.cache_clear()


def select(name, cache_dir, dtype=torch.float32, head_dim=64, config=None):
    return select_attention_backend(name, device="cpu", dtype=dtype, head_dim=head_dim, config=config,
                                    cache_dir=cache_dir)


def qkv(d=64):
    return randn((2, 37, 3, d), 0), randn((2, 29, 3, d), 1), randn((2, 29, 3, d), 2)


def test_unknown_name_lists_the_valid_ones(tmp_path):
    with pytest.raises(ConfigError, match="unknown backend 'flash' .valid: auto, fa, torch_sdpa, sage_attn, triton"):
        select("flash", tmp_path)


def test_triton_on_cpu_is_refused_with_the_reason(tmp_path):
    with pytest.raises(ConfigError, match="'triton' cannot run on cpu .*Triton kernels run on CUDA"):
        select("triton", tmp_path)


def test_fa_without_the_native_library_is_refused_with_the_reason(tmp_path, monkeypatch):
    monkeypatch.setattr(_native, "native_library", lambda: _native.NativeLibrary(None, "disabled by the test"))
    with pytest.raises(ConfigError, match="'fa' cannot run on cpu .*disabled by the test"):
        select("fa", tmp_path)


@pytest.mark.parametrize("name", [pytest.param("fa", marks=requires_native), "torch_sdpa"])
def test_exact_backends_match_the_reference(tmp_path, name):
    backend = select(name, tmp_path)
    assert backend.exact
    q, k, v = qkv()
    out, lse = backend.forward(q, k, v)
    expected, expected_lse = attention_reference(q, k, v)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    if backend.returns_lse:
        torch.testing.assert_close(lse, expected_lse, atol=1e-5, rtol=1e-5)
    else:
        assert lse is None


def test_sage_attn_runs_on_cpu_within_its_bound_with_its_options(tmp_path):
    backend = select("sage_attn", tmp_path, config="qk_quant_gran=per_token,smooth_k=true")
    assert not backend.exact and backend.kernel == "torch" and backend.options["qk_quant_gran"] == "per_token"
    q, k, v = qkv()
    out, lse = backend.forward(q, k, v)
    expected, _ = attention_reference(q, k, v)
    assert F.cosine_similarity(out.flatten(), expected.flatten(), dim=0) >= 0.999


def test_sage_attn_rejects_a_granularity_its_kernel_lacks(tmp_path):
    with pytest.raises(ConfigError, match="qk_quant_gran='per_warp' is not available with the torch kernel"):
        select("sage_attn", tmp_path, config={"qk_quant_gran": "per_warp"})


def test_unknown_option_is_an_error_naming_the_backend(tmp_path):
    with pytest.raises(ConfigError, match="unknown option.*smooth_k for attention backend 'torch_sdpa'"):
        select("torch_sdpa", tmp_path, config="smooth_k=true")


@requires_native
def test_auto_times_the_exact_backends_caches_the_choice_and_reuses_it(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="sglang_diffusion.attention.selector"):
        first = select("auto", tmp_path, head_dim=32)
    assert first.name in ("fa", "torch_sdpa") and first.exact
    cache = json.loads((tmp_path / selector.CACHE_FILE).read_text())
    (entry,) = cache.values()
    assert entry["backend"] == first.name and set(entry["timings_ms"]) == {"fa", "torch_sdpa"}
    assert "auto: fastest exact backend" in caplog.text
    selector._select.cache_clear()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="sglang_diffusion.attention.selector"):
        again = select("auto", tmp_path, head_dim=32)
    assert again.name == first.name and "tuned earlier, cached in" in caplog.text


def test_auto_takes_the_only_runnable_exact_backend_without_timing(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(_native, "native_library", lambda: _native.NativeLibrary(None, "disabled by the test"))
    with caplog.at_level(logging.INFO, logger="sglang_diffusion.attention.selector"):
        backend = select("auto", tmp_path)
    assert backend.name == "torch_sdpa" and "the only exact backend" in caplog.text
    assert not (tmp_path / selector.CACHE_FILE).exists()


def test_selection_is_logged_once(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="sglang_diffusion.attention.selector"):
        select("torch_sdpa", tmp_path)
        select("torch_sdpa", tmp_path)
    assert sum("attention backend:" in r.getMessage() for r in caplog.records) == 1


def test_flag_wins_over_component_override_over_auto():
    assert resolve_backend_name("fa", "sage_attn") == "fa"
    assert resolve_backend_name("auto", "sage_attn") == "sage_attn"
    assert resolve_backend_name(None, None) == "auto"
