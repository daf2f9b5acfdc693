"""Step caching through the same block protocol on every native family (tiny models): a
threshold of 0 is exact bit for bit, a loose one reuses blocks; TeaCache runs on FLUX.1 and is
refused where no calibration is published."""

from __future__ import annotations

import numpy as np
import pytest

from sglang_diffusion.cache import Caching
from sglang_diffusion.config.cache import CacheDitParams, DBCacheParams
from sglang_diffusion.config.sampling_params import SamplingParams
from sglang_diffusion.config.server_args import ServerArgs
from sglang_diffusion.errors import ConfigError
from sglang_diffusion.pipelines.registry import build_pipeline
from sglang_diffusion.pipelines.stages.denoising import DenoisingStage
from sglang_diffusion.platform import Platform
from sglang_diffusion.testing import TINY_SAMPLING

FAMILIES = ("flux.1", "flux.2", "qwen-image", "hunyuanvideo")


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_caching_runs_on_the_family_through_the_block_protocol(tiny_model, family, monkeypatch):
    monkeypatch.setenv("SGLANG_CACHE_DIT_ENABLED", "true")  # the registry gives the family its cache
    monkeypatch.setenv("SGLANG_CACHE_DIT_RDT", "0")
    monkeypatch.setenv("SGLANG_CACHE_DIT_WARMUP", "0")
    pipe = build_pipeline(ServerArgs(model_path=str(tiny_model(family)), backend="sglang"), Platform.current())
    stage = next(s for s in pipe.stages if isinstance(s, DenoisingStage))
    request = SamplingParams(prompt="a red fox", negative_prompt="blurry", seed=5,
                             **{**TINY_SAMPLING[family], "num_inference_steps": 4})
    zero = pipe.generate(request)
    assert zero.cache is not None and " 0 skipped" in zero.cache
    stage.caching = Caching()
    exact = pipe.generate(request)
    assert np.array_equal(zero.frames, exact.frames) and exact.cache is None
    stage.caching = Caching(CacheDitParams(DBCacheParams(Fn_compute_blocks=1, Bn_compute_blocks=0,
                                                         residual_diff_threshold=0.99, max_warmup_steps=1,
                                                         max_continuous_cached_steps=-1)))
    loose = pipe.generate(request)
    assert " 0 skipped" not in loose.cache, loose.cache
    tea = SamplingParams(**{**request.__dict__, "enable_teacache": True})
    if family == "flux.1":  # published for FLUX.1-dev's width; the tiny model's runs uncalibrated
        assert pipe.generate(tea).cache.startswith("TeaCache thresh 0.3 (no calibration")
    else:
        with pytest.raises(ConfigError, match="TeaCache: no published calibration"):
            pipe.generate(tea)
