"""Step caching on the native Wan pipelines (tiny models): exact at threshold 0 on every path,
per-request state, separate settings for Wan2.2's two experts, and the CLI's report."""

from __future__ import annotations

import numpy as np
import pytest

from sglang_diffusion.cache import Caching
from sglang_diffusion.config.cache import CacheDitParams, DBCacheParams
from sglang_diffusion.config.sampling_params import SamplingParams
from sglang_diffusion.config.server_args import ServerArgs
from sglang_diffusion.pipelines.registry import build_pipeline
from sglang_diffusion.pipelines.stages.denoising import DenoisingStage
from sglang_diffusion.platform import Platform
from tests.conftest import run_cli

REQUEST = dict(prompt="a red fox in the snow", negative_prompt="blurry", height=64, width=64, num_frames=5,
               num_inference_steps=6, guidance_scale=5.0, seed=3)
LOOSE = dict(residual_diff_threshold=0.9, max_warmup_steps=2, max_continuous_cached_steps=-1)


@pytest.fixture(scope="module")
def built(tiny_model):
    """One pipeline per family, built once; `built(family, params, secondary)` sets its Cache-DiT
    settings as `Caching.from_args` would from those ServerArgs."""
    pipes = {}

    def get(family, params: DBCacheParams | None = None, secondary: dict | None = None):
        if family not in pipes:
            pipes[family] = build_pipeline(ServerArgs(model_path=str(tiny_model(family))), Platform.current())
        pipe = pipes[family]
        cache_dit = None if params is None else CacheDitParams(params, tuple(sorted((secondary or {}).items())))
        next(s for s in pipe.stages if isinstance(s, DenoisingStage)).caching = Caching(cache_dit)
        return pipe

    return get


@pytest.fixture(scope="module")
def exact(built):
    return built("wan2.1-t2v").generate(SamplingParams(**REQUEST))


def test_cache_dit_keeps_the_native_pipeline(tiny_model, monkeypatch):
    monkeypatch.setenv("SGLANG_CACHE_DIT_ENABLED", "true")
    monkeypatch.setenv("SGLANG_CACHE_DIT_SECONDARY_RDT", "0.05")
    pipe = build_pipeline(ServerArgs(model_path=str(tiny_model("wan2.2-t2v-a14b"))), Platform.current())
    stage = next(s for s in pipe.stages if isinstance(s, DenoisingStage))
    assert "cache Cache-DiT DBCache F1B0 warmup 4 rdt 0.24 mc 3; second expert F1B0 warmup 4 rdt 0.05" in \
        stage.describe()


ZERO_PATHS = {
    "dbcache": DBCacheParams(residual_diff_threshold=0.0, max_warmup_steps=0),
    "taylorseer": DBCacheParams(residual_diff_threshold=0.0, max_warmup_steps=0, enable_taylorseer=True,
                                taylorseer_order=2),
    "scm-dynamic": DBCacheParams(residual_diff_threshold=0.0, max_warmup_steps=0, scm_preset="ultra"),
}


@pytest.mark.parametrize("name", ZERO_PATHS)
def test_threshold_zero_gives_the_exact_output_bit_for_bit(built, exact, name):
    out = built("wan2.1-t2v", ZERO_PATHS[name]).generate(SamplingParams(**REQUEST))
    assert np.array_equal(out.frames, exact.frames)
    assert " 0 skipped" in out.cache


def test_teacache_threshold_zero_is_exact_and_a_request_without_it_stays_exact(built, exact):
    pipe, want = built("wan2.1-t2v"), exact
    zero = pipe.generate(SamplingParams(**REQUEST, enable_teacache=True, teacache_thresh=0.0))
    assert np.array_equal(zero.frames, want.frames) and "0 skipped" in zero.cache
    cached = pipe.generate(SamplingParams(**REQUEST, enable_teacache=True, teacache_thresh=1.0))
    assert "TeaCache" in cached.cache and " 0 skipped" not in cached.cache
    assert not np.array_equal(cached.frames, want.frames)
    after = pipe.generate(SamplingParams(**REQUEST))
    assert np.array_equal(after.frames, want.frames) and after.cache is None


def test_requests_with_different_settings_in_a_row_equal_each_alone(built):
    pipe = built("wan2.1-t2v")
    a, b = (SamplingParams(**REQUEST, enable_teacache=True, teacache_thresh=t) for t in (0.3, 1.0))
    alone_b = pipe.generate(b).frames
    first_a, then_b = pipe.generate(a).frames, pipe.generate(b).frames
    assert np.array_equal(then_b, alone_b)
    assert np.array_equal(pipe.generate(a).frames, first_a)


def test_dbcache_skips_and_its_state_is_reset_per_request(built):
    pipe = built("wan2.1-t2v", DBCacheParams(**LOOSE))
    first, second = pipe.generate(SamplingParams(**REQUEST)), pipe.generate(SamplingParams(**REQUEST))
    assert np.array_equal(first.frames, second.frames) and first.cache == second.cache
    # after 2 warm-up steps every step reuses the middle block, in 1 (batched) or 2 (two-pass) branches
    assert "DBCache F1B0" in first.cache and any(f"computed, {n} skipped" in first.cache for n in (4, 8))


def test_wan22_experts_take_their_own_settings(built):
    """A threshold of 0 on one expert keeps it exact: only the other one reuses blocks."""
    never, loose = dict(residual_diff_threshold=0.0), dict(LOOSE, max_warmup_steps=0)
    runs = {name: built("wan2.2-t2v-a14b", DBCacheParams(**first), second).generate(SamplingParams(**REQUEST))
            for name, first, second in [("neither", never, never), ("second", never, loose),
                                        ("first", loose, never)]}
    skipped = {name: int(out.cache.split(" skipped")[0].rsplit(" ", 1)[1]) for name, out in runs.items()}
    assert skipped["neither"] == 0 and skipped["second"] > 0 and skipped["first"] > 0
    assert np.array_equal(runs["neither"].frames, built("wan2.2-t2v-a14b").generate(SamplingParams(**REQUEST)).frames)


@pytest.mark.slow
def test_cli_env_variable_runs_native_and_reports_block_steps(tiny_model, tmp_path):
    env = {"SGLANG_CACHE_DIT_ENABLED": "true", "SGLANG_CACHE_DIT_RDT": "0.9", "SGLANG_CACHE_DIT_WARMUP": "1",
           "SGLANG_CACHE_DIT_MC": "-1"}
    done = run_cli("generate", "--model-path", tiny_model("wan2.1-t2v"), "--prompt", "a fox", "--height", 64,
                   "--width", 64, "--num-frames", 5, "--num-inference-steps", 4, "--output-path", tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert "native pipeline for WanPipeline with Cache-DiT" in done.stderr
    assert "cache DBCache F1B0" in done.stdout and "block-steps computed" in done.stdout
    assert " 0 skipped" not in done.stdout


def test_enable_teacache_is_a_sampling_flag():
    from sglang_diffusion.cli.args import build_parser, parse

    _, sampling = parse(build_parser("sglang generate", "", sampling=True),
                        ["--prompt", "x", "--enable-teacache", "--teacache-thresh", "0.1"])
    assert sampling.enable_teacache and sampling.teacache_thresh == 0.1


def test_teacache_on_the_diffusers_backend_is_refused(tiny_model):
    from sglang_diffusion.errors import InvalidRequestError

    pipe = build_pipeline(ServerArgs(model_path=str(tiny_model("wan2.1-t2v")), backend="diffusers"),
                          Platform.current())
    with pytest.raises(InvalidRequestError, match="TeaCache runs on native pipelines only"):
        pipe.generate(SamplingParams(**REQUEST, enable_teacache=True))


def test_server_requests_carry_teacache():
    from sglang_diffusion.server.params import ParamsBuilder
    from sglang_diffusion.server.schemas import ImageGenerationRequest

    builder = ParamsBuilder(ServerArgs(), SamplingParams(), None, "model")
    params = builder.sampling(ImageGenerationRequest(prompt="x", enable_teacache=True, teacache_thresh=0.1))
    assert params.enable_teacache and params.teacache_thresh == 0.1
    assert not builder.sampling(ImageGenerationRequest(prompt="x")).enable_teacache
