"""Cache-DiT on the diffusers backend: it skips transformer blocks, stays close to the uncached
result, reads Cache-DiT's config format with errors that name the file, and is switched on by
--enable-cache-dit, --cache-dit-config or SGLANG_CACHE_DIT_ENABLED.

The pipeline is the tiny FLUX.1 of `sglang_diffusion.testing` (1 double- and 2 single-stream
blocks): with Fn_compute_blocks=1 a cached step runs 1 block of 3.
"""

import importlib.util
import json
import sys

import pytest
import torch

from sglang_diffusion.config.server_args import ServerArgs
from sglang_diffusion.errors import ConfigError

needs_cache_dit = pytest.mark.skipif(importlib.util.find_spec("cache_dit") is None,
                                     reason="cache-dit is not installed: pip install 'sglang-diffusion[cache]'")

STEPS = 10
NUM_BLOCKS = 3  # tiny FLUX.1: 1 double-stream + 2 single-stream blocks
# Threshold 0.3 caches 4 of the 8 steps after warmup on the tiny model (its relative residual
# changes are 0.27-0.62 per step); the first step is always computed.
CONFIG = {"cache_config": {"Fn_compute_blocks": 1, "Bn_compute_blocks": 0, "max_warmup_steps": 2,
                           "residual_diff_threshold": 0.3}}


def _load(path):
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _blocks(pipe):
    return [*pipe.transformer.transformer_blocks, *pipe.transformer.single_transformer_blocks]


def _denoise(pipe, latents):
    """Final latents of a STEPS-step run from fixed initial latents, and how many block forwards it took."""
    calls = []
    handles = [b.register_forward_hook(lambda *_: calls.append(1)) for b in _blocks(pipe)]
    try:
        with torch.inference_mode():
            out = pipe("a cat", height=64, width=64, num_inference_steps=STEPS, latents=latents.clone(),
                       output_type="latent").images
    finally:
        for h in handles:
            h.remove()
    return out, len(calls)


@pytest.fixture(scope="module")
def flux_path(tiny_model):
    return tiny_model("flux.1")


@pytest.fixture(scope="module")
def runs(flux_path, tmp_path_factory):
    """Uncached and cached runs from the same initial latents, plus a baseline that drops the
    blocks the cache skipped (identity instead of the cached residual) on the same steps."""
    import cache_dit

    from sglang_diffusion.pipelines.cache_dit import enable_cache_dit

    config = tmp_path_factory.mktemp("cache_dit") / "cache.yaml"
    config.write_text(json.dumps(CONFIG))  # JSON is YAML too
    latents = torch.randn(1, 16, 64, generator=torch.Generator().manual_seed(0))  # [B, (H/16)*(W/16), 4*C]

    uncached, uncached_calls = _denoise(_load(flux_path), latents)
    pipe = _load(flux_path)
    settings = enable_cache_dit(pipe, str(config))
    cached, cached_calls = _denoise(pipe, latents)
    cached_steps = cache_dit.summary(pipe, logging=False)[0].cached_steps

    dropped_pipe, step = _load(flux_path), [-1]
    dropped_pipe.transformer.register_forward_pre_hook(lambda *_: step.__setitem__(0, step[0] + 1))
    for block in _blocks(dropped_pipe)[1:]:
        block.register_forward_hook(
            lambda m, args, kwargs, out: (kwargs["encoder_hidden_states"], kwargs["hidden_states"])
            if step[0] in cached_steps else out, with_kwargs=True)
    dropped, _ = _denoise(dropped_pipe, latents)
    return dict(latents=latents, uncached=uncached, uncached_calls=uncached_calls, cached=cached,
                cached_calls=cached_calls, cached_steps=cached_steps, dropped=dropped, settings=settings, pipe=pipe)


@needs_cache_dit
def test_cache_skips_transformer_blocks_on_cached_steps(runs):
    assert runs["uncached_calls"] == STEPS * NUM_BLOCKS
    assert len(runs["cached_steps"]) >= 2 and min(runs["cached_steps"]) >= 2  # none in the 2 warmup steps
    # each cached step runs Fn_compute_blocks=1 block of 3
    assert runs["cached_calls"] == runs["uncached_calls"] - len(runs["cached_steps"]) * (NUM_BLOCKS - 1)


@needs_cache_dit
def test_cached_result_stays_close_to_uncached(runs):
    # Error relative to how far denoising moved the latents. Tolerance: at most 2% of that, and at
    # most a third of the error of dropping the skipped blocks on the same steps (the cache reuses
    # their residual instead). Measured: 0.4% for the cache, 2.8% for dropping.
    displacement = (runs["uncached"] - runs["latents"]).norm()
    cache_error = ((runs["cached"] - runs["uncached"]).norm() / displacement).item()
    drop_error = ((runs["dropped"] - runs["uncached"]).norm() / displacement).item()
    assert 0 < cache_error <= 0.02
    assert cache_error <= drop_error / 3


@needs_cache_dit
def test_config_file_values_reach_cache_dit(runs):
    config = runs["settings"].cache_config
    assert (config.Fn_compute_blocks, config.max_warmup_steps, config.residual_diff_threshold) == (1, 2, 0.3)
    assert runs["settings"].describe().startswith(
        "DBCache Fn_compute_blocks=1, Bn_compute_blocks=0, max_warmup_steps=2, residual_diff_threshold=0.3")


@needs_cache_dit
def test_cache_stays_with_its_pipeline_not_its_class(runs):
    from diffusers import FluxPipeline

    pipe = runs["pipe"]
    assert type(pipe) is not FluxPipeline and isinstance(pipe, FluxPipeline)
    assert type(pipe).__name__ == "FluxPipeline"  # cache-dit finds its adapter by this name
    assert not getattr(FluxPipeline, "_is_cached", False)
    assert "_original_call" not in vars(FluxPipeline)


@needs_cache_dit
def test_cached_pipeline_is_freed_when_dropped(flux_path, tmp_path):
    import gc
    import weakref

    from sglang_diffusion.pipelines.cache_dit import enable_cache_dit

    config = tmp_path / "cache.yaml"
    config.write_text(json.dumps(CONFIG))
    pipe = _load(flux_path)
    enable_cache_dit(pipe, str(config))
    transformer = weakref.ref(pipe.transformer)
    del pipe
    gc.collect()
    assert transformer() is None  # cache-dit's own wrapper of FluxPipeline.__call__ would hold it


@needs_cache_dit
def test_flat_json_taylorseer_and_dbprune_configs_are_read(tmp_path):
    import cache_dit

    from sglang_diffusion.pipelines.cache_dit import load_cache_dit_config

    flat = tmp_path / "flat.json"
    flat.write_text(json.dumps({"Fn_compute_blocks": 2, "residual_diff_threshold": 0.12}))
    settings = load_cache_dit_config(str(flat))
    assert (settings.cache_config.Fn_compute_blocks, settings.cache_config.residual_diff_threshold) == (2, 0.12)
    assert settings.calibrator_config is None

    nested = tmp_path / "taylor.yaml"
    nested.write_text("cache_config:\n  max_warmup_steps: 4\n  enable_taylorseer: true\n  taylorseer_order: 2\n")
    settings = load_cache_dit_config(str(nested))
    assert settings.cache_config.max_warmup_steps == 4
    assert settings.calibrator_config.taylorseer_order == 2

    prune = tmp_path / "prune.yaml"
    prune.write_text("cache_config:\n  cache_type: DBPrune\n  non_prune_block_ids: [0]\n")
    settings = load_cache_dit_config(str(prune))
    assert isinstance(settings.cache_config, cache_dit.DBPruneConfig)
    assert settings.cache_config.cache_type is cache_dit.CacheType.DBPrune  # the enum its adapter needs


@needs_cache_dit
def test_no_config_means_cache_dit_defaults():
    import cache_dit

    from sglang_diffusion.pipelines.cache_dit import load_cache_dit_config

    settings = load_cache_dit_config(None)
    assert settings.cache_config == cache_dit.DBCacheConfig() and settings.calibrator_config is None
    assert "cache-dit defaults" in settings.describe()


BAD_CONFIGS = [
    ("bad.yaml", "cache_config: [1, 2\n", "not valid YAML"),
    ("bad.json", '{"cache_config": {"Fn_compute_blocks": 1,}}', "not valid JSON"),
    ("empty.yaml", "", "empty file"),
    ("list.yaml", "- 1\n- 2\n", "expected a mapping"),
    ("typo.yaml", "cache_config:\n  residual_diff_treshold: 0.1\n", "unknown key cache_config.residual_diff_treshold"),
    ("type.yaml", "cache_config:\n  Fn_compute_blocks: eight\n", "cache_config.Fn_compute_blocks must be a int"),
    ("section.yaml", "cache_config: {}\nextra: 1\n", "unknown key 'extra'"),
    ("parallel.yaml", "cache_config: {}\nparallelism_config:\n  ulysses_size: 2\n", "parallelism_config is not taken"),
    ("cachetype.yaml", "cache_config:\n  cache_type: Mystery\n", "Unsupported cache_type"),
    ("calibrators.yaml", "enable_taylorseer: true\nenable_foca: true\n", "mutually exclusive"),
]


@needs_cache_dit
@pytest.mark.parametrize("name,text,reason", BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_malformed_config_is_a_config_error_naming_the_file(tmp_path, name, text, reason):
    from sglang_diffusion.pipelines.cache_dit import load_cache_dit_config

    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_cache_dit_config(str(path))
    assert str(path) in str(e.value) and reason in str(e.value)


@needs_cache_dit
def test_missing_config_file_is_a_config_error(tmp_path):
    from sglang_diffusion.pipelines.cache_dit import load_cache_dit_config

    with pytest.raises(ConfigError, match="no such file") as e:
        load_cache_dit_config(str(tmp_path / "nope.yaml"))
    assert "nope.yaml" in str(e.value)


@needs_cache_dit
def test_pipeline_cache_dit_cannot_adapt_is_a_config_error():
    from diffusers import DiffusionPipeline

    from sglang_diffusion.pipelines.cache_dit import enable_cache_dit

    class NoisePipeline(DiffusionPipeline):
        def __init__(self, transformer):
            super().__init__()
            self.register_modules(transformer=transformer)

    class FluxLookalikePipeline(NoisePipeline):  # a known name prefix on a transformer it cannot read
        pass

    with pytest.raises(ConfigError, match="Cache-DiT cannot adapt NoisePipeline: .* Flux, "):
        enable_cache_dit(NoisePipeline(torch.nn.Linear(2, 2)), None)
    pipe = FluxLookalikePipeline(torch.nn.Linear(2, 2))
    with pytest.raises(ConfigError, match="Cache-DiT cannot adapt FluxLookalikePipeline: .*transformer_blocks"):
        enable_cache_dit(pipe, None)
    assert type(pipe) is FluxLookalikePipeline


def test_missing_cache_dit_package_says_how_to_install(monkeypatch):
    from sglang_diffusion.pipelines.cache_dit import enable_cache_dit

    monkeypatch.setitem(sys.modules, "cache_dit", None)  # makes `import cache_dit` fail
    with pytest.raises(ConfigError, match=r"pip install 'sglang-diffusion\[cache\]'"):
        enable_cache_dit(object(), None)


@pytest.mark.parametrize("value,enabled", [(None, False), ("", False), ("0", False), ("false", False),
                                           ("no", False), ("true", True), ("1", True), ("yes", True),
                                           ("TRUE", True)])
def test_env_var_sets_the_default_of_enable_cache_dit(monkeypatch, value, enabled):
    if value is None:
        monkeypatch.delenv("SGLANG_CACHE_DIT_ENABLED", raising=False)
    else:
        monkeypatch.setenv("SGLANG_CACHE_DIT_ENABLED", value)
    args = ServerArgs()
    assert args.enable_cache_dit is enabled and args.cache_dit_enabled is enabled


def test_bad_env_var_value_is_a_config_error_naming_it(monkeypatch):
    monkeypatch.setenv("SGLANG_CACHE_DIT_ENABLED", "maybe")
    with pytest.raises(ConfigError, match="SGLANG_CACHE_DIT_ENABLED.*'maybe'"):
        ServerArgs()


def test_flag_beats_env_var_and_a_config_file_implies_enabling(monkeypatch):
    monkeypatch.setenv("SGLANG_CACHE_DIT_ENABLED", "true")
    assert not ServerArgs(enable_cache_dit=False).cache_dit_enabled
    monkeypatch.delenv("SGLANG_CACHE_DIT_ENABLED")
    args = ServerArgs(cache_dit_config="cache.yaml")
    assert args.cache_dit_enabled and args.enable_cache_dit is False  # the user's value is not rewritten


def _backend(flux_path, **server_args):
    from sglang_diffusion.loader.resolve import read_model_index
    from sglang_diffusion.pipelines.diffusers_backend import DiffusersBackendPipeline
    from sglang_diffusion.platform import Platform

    args = ServerArgs(model_path=str(flux_path), backend="diffusers", **server_args)
    return DiffusersBackendPipeline(args, read_model_index(flux_path), Platform(torch.device("cpu")))


@needs_cache_dit
def test_env_var_turns_cache_dit_on_in_the_diffusers_backend(monkeypatch, flux_path):
    # Cache-DiT's default config computes the first 8 blocks; the tiny model has 3, which the
    # backend refuses when it is built rather than at the first request.
    monkeypatch.setenv("SGLANG_CACHE_DIT_ENABLED", "true")
    with pytest.raises(ConfigError, match=r"cache-dit defaults\): Fn_compute_blocks=8 is more than the 3 "):
        _backend(flux_path)


@needs_cache_dit
def test_cache_dit_config_runs_in_the_diffusers_backend(monkeypatch, flux_path, tmp_path):
    from sglang_diffusion.config.sampling_params import SamplingParams

    monkeypatch.delenv("SGLANG_CACHE_DIT_ENABLED", raising=False)
    config = tmp_path / "cache.yaml"
    config.write_text(json.dumps(CONFIG))
    pipeline = _backend(flux_path, cache_dit_config=str(config))
    assert pipeline.describe()["cache_dit"].startswith("DBCache Fn_compute_blocks=1, ")
    calls = []
    for block in _blocks(pipeline.pipe):
        block.register_forward_hook(lambda *_: calls.append(1))
    out = pipeline.generate(SamplingParams(prompt="a cat", height=64, width=64, num_inference_steps=STEPS))
    assert out.frames.shape == (1, 1, 64, 64, 3)
    assert len(calls) < STEPS * NUM_BLOCKS
    assert out.timings.get("denoising", 0) > 0  # the stage timer's hooks survive cache-dit's forward patch
