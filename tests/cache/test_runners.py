"""DBCache, TaylorSeer, step masks and TeaCache on a synthetic block stack (the block protocol
without a model): what runs, what is reused, and that a threshold of 0 is exact."""

from __future__ import annotations

import logging

import pytest
import torch

from sglang_diffusion.cache.dbcache import DBCache
from sglang_diffusion.cache.stats import CacheStats
from sglang_diffusion.cache.step_mask import PRESET_BINS, mask_from_bins, preset_mask, step_mask
from sglang_diffusion.cache.taylorseer import TaylorSeer
from sglang_diffusion.cache.teacache import TeaCache, TeaCacheCalibration
from sglang_diffusion.config.cache import DBCacheParams
from sglang_diffusion.models.dits.blocks import run_blocks

STEPS = 12


class Stack:
    """`n` residual blocks on a (hidden, encoder_hidden) state, counting the calls of each."""

    def __init__(self, n: int, width: int = 8, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.weights = [torch.randn(width, width, generator=g) / width**0.5 for _ in range(n)]
        self.calls = [0] * n

    def blocks(self, t: float):
        def block(k):
            def run(state):
                self.calls[k] += 1
                h, e = state
                return h + torch.tanh(h @ self.weights[k]) * (1 + t), e + 0.1 * h.mean() * (k + 1)
            return run
        return [block(k) for k in range(len(self.weights))]


def inputs(step: int):
    g = torch.Generator().manual_seed(100)
    base = torch.randn(2, 5, 8, generator=g)
    return (base * (1 + 0.01 * step), torch.ones(2, 3, 8))


def run_steps(stack: Stack, runner_of=None, steps: int = STEPS):
    outs = []
    for step in range(steps):
        t = 1 - step / steps
        runner = runner_of(step) if runner_of else None
        outs.append(run_blocks(stack.blocks(t), inputs(step), runner, signal=lambda: torch.full((2, 6, 8), t)))
    return outs


def dbcache(n_steps=STEPS, **params) -> DBCache:
    return DBCache(DBCacheParams(**params), n_steps, CacheStats("test"))


PATHS = {  # every DBCache path with a threshold of 0
    "dbcache": dict(),
    "taylorseer-1": dict(enable_taylorseer=True, taylorseer_order=1),
    "taylorseer-2": dict(enable_taylorseer=True, taylorseer_order=2),
    "scm-dynamic": dict(scm_preset="fast"),
    "fn2-bn1": dict(Fn_compute_blocks=2, Bn_compute_blocks=1),
}


@pytest.mark.parametrize("name", PATHS)
def test_threshold_zero_is_bit_exact(name):
    exact = run_steps(Stack(6))
    cache = dbcache(residual_diff_threshold=0.0, max_warmup_steps=0, max_continuous_cached_steps=-1, **PATHS[name])
    cached = run_steps(Stack(6), lambda step: cache.runner(step, "cond"))
    for a, b in zip(exact, cached):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert cache.stats.skipped == 0 and cache.stats.computed == 6 * STEPS


def test_teacache_threshold_zero_is_bit_exact():
    cal = TeaCacheCalibration("test", (1.0, 0.0), 0, 0.1)
    cache = TeaCache(cal, 0.0, CacheStats("test"))
    exact = run_steps(Stack(4))
    cached = run_steps(Stack(4), lambda step: cache.runner(step, "cond"))
    assert all(torch.equal(x, y) for a, b in zip(exact, cached) for x, y in zip(a, b))


def test_first_and_last_blocks_always_run_and_the_middle_is_reused():
    stack = Stack(6)
    cache = dbcache(Fn_compute_blocks=2, Bn_compute_blocks=1, residual_diff_threshold=0.9, max_warmup_steps=2,
                    max_continuous_cached_steps=-1)
    run_steps(stack, lambda step: cache.runner(step, "cond"))
    assert stack.calls[:2] == [STEPS] * 2 and stack.calls[-1] == STEPS  # Fn and Bn: every step
    computed_steps = stack.calls[2]
    assert stack.calls[2:5] == [computed_steps] * 3
    assert computed_steps == 2  # the warm-up, then reuse at this loose threshold
    assert cache.stats.skipped == 3 * (STEPS - computed_steps)
    assert cache.stats.computed == 6 * STEPS - cache.stats.skipped


def test_cap_on_consecutive_cached_steps():
    stack = Stack(4)
    cache = dbcache(residual_diff_threshold=0.9, max_warmup_steps=1, max_continuous_cached_steps=2)
    run_steps(stack, lambda step: cache.runner(step, "cond"))
    # step 0 computes (warm-up), then cached, cached, computed, ...: steps 0, 3, 6, 9
    assert stack.calls[1] == 4


def test_a_reused_step_adds_the_cached_residual():
    stack = Stack(3)
    cache = dbcache(residual_diff_threshold=0.9, max_warmup_steps=1, max_continuous_cached_steps=-1)
    outs = run_steps(stack, lambda step: cache.runner(step, "cond"), steps=2)
    assert stack.calls == [2, 1, 1]
    h = Stack(3).blocks(0.5)[0](inputs(1))  # step 1 of 2: t = 0.5
    state0 = run_blocks(Stack(3).blocks(1.0)[:1], inputs(0))
    residual = [a - b for a, b in zip(run_blocks(Stack(3).blocks(1.0), inputs(0)), state0)]
    want = tuple(a + r for a, r in zip(h, residual))
    assert all(torch.allclose(x, y) for x, y in zip(outs[1], want))


def test_branches_keep_separate_caches():
    cache = dbcache(residual_diff_threshold=0.9, max_warmup_steps=1, max_continuous_cached_steps=-1)
    stack = Stack(3)
    run_steps(stack, lambda step: cache.runner(step, "cond"), steps=1)
    # "uncond" has not computed yet: its first step computes every block
    before = list(stack.calls)
    run_blocks(stack.blocks(0.5), inputs(3), cache.runner(1, "uncond"))
    assert [a - b for a, b in zip(stack.calls, before)] == [1, 1, 1]


def test_fewer_blocks_than_fn_plus_bn_clamps_with_a_warning(caplog):
    cache = dbcache(Fn_compute_blocks=3, Bn_compute_blocks=2, residual_diff_threshold=0.9, max_warmup_steps=0)
    with caplog.at_level(logging.WARNING):
        outs = run_steps(Stack(4), lambda step: cache.runner(step, "cond"), steps=3)
    assert "more than the DiT's 4 blocks" in caplog.text and caplog.text.count("more than") == 1
    exact = run_steps(Stack(4), steps=3)
    assert all(torch.equal(x, y) for a, b in zip(exact, outs) for x, y in zip(a, b))  # nothing left to cache


@pytest.mark.parametrize("order,power", [(1, 1), (2, 2)])
def test_taylorseer_reproduces_a_polynomial_residual(order, power):
    seer = TaylorSeer(order)
    value = lambda s: (torch.full((3,), 2.0) + 0.5 * s**power - 0.25 * s,)  # noqa: E731
    for s in (0, 2, 5):  # uneven gaps between computed steps
        seer.update(s, value(s))
    for s in (6, 7, 9):
        assert torch.allclose(seer.predict(s)[0], value(s)[0], atol=1e-5)


def test_taylorseer_extrapolates_in_a_cached_run():
    """The DBCache residual of the middle blocks, changing linearly with the step, is
    extrapolated exactly by order 1 on cached steps."""
    cache = dbcache(enable_taylorseer=True, taylorseer_order=1, scm_compute_bins=(2, 1), scm_cache_bins=(2, 9),
                    scm_policy="static", max_warmup_steps=0)
    scale = [1.0 + 0.5 * s for s in range(6)]
    outs = []
    for step in range(6):
        blocks = [lambda st: (st[0] + 1.0,), lambda st, s=step: (st[0] + scale[s],)]
        outs.append(run_blocks(blocks, (torch.zeros(2),), cache.runner(step, "cond"))[0])
    assert torch.allclose(torch.stack(outs), torch.tensor([[1 + c] * 2 for c in scale]))


def test_mask_from_bins_and_static_policy_compute_exactly_those_steps():
    assert mask_from_bins((2, 1), (3, 2), 10) == [True, True, False, False, False, True, False, False, True, True]
    stack = Stack(3)
    cache = dbcache(scm_compute_bins=(3, 2, 1), scm_cache_bins=(2, 3), scm_policy="static", max_warmup_steps=0,
                    max_continuous_cached_steps=-1, residual_diff_threshold=0.0)
    run_steps(stack, lambda step: cache.runner(step, "cond"))
    mask = mask_from_bins((3, 2, 1), (2, 3), STEPS)
    assert stack.calls[1] == sum(mask) and stack.calls[0] == STEPS
    assert cache.stats.skipped == 2 * mask.count(False)


@pytest.mark.parametrize("name", PRESET_BINS)
@pytest.mark.parametrize("steps", [28, 30, 50])
def test_presets_keep_their_share_and_compute_first_and_last(name, steps):
    mask = preset_mask(name, steps)
    share = sum(PRESET_BINS[name][0]) / 28
    assert len(mask) == steps and mask[0] and mask[-1]
    assert abs(sum(mask) / steps - share) < 0.1
    assert preset_mask(name, 28)[1:-1] == mask_from_bins(*PRESET_BINS[name], 28)[1:-1]
    assert step_mask("none", None, None, steps) is None
    order = ["slow", "medium", "fast", "ultra"]
    assert all(sum(preset_mask(a, steps)) >= sum(preset_mask(b, steps)) for a, b in zip(order, order[1:]))


def test_teacache_calibration_by_model_width_and_refusal():
    from types import SimpleNamespace

    from sglang_diffusion.cache.teacache import UNCALIBRATED, calibration_for
    from sglang_diffusion.errors import ConfigError
    from sglang_diffusion.models.dits.wan import WanConfig, WanTransformer3DModel

    def wan(heads):
        model = WanTransformer3DModel.__new__(WanTransformer3DModel)
        model.__dict__["config"] = WanConfig(num_attention_heads=heads, attention_head_dim=128)
        return model

    assert calibration_for(wan(12)).name == "Wan2.1-T2V-1.3B fit"
    assert calibration_for(wan(40)).name == "Wan2.1-T2V-14B fit"
    assert calibration_for(wan(2)) is UNCALIBRATED
    cache = TeaCache(UNCALIBRATED, 1.0, CacheStats("test"))
    assert cache.rescale(0.25) == 0.25
    with pytest.raises(ConfigError, match="no published calibration for SimpleNamespace"):
        calibration_for(SimpleNamespace(config=None))


def test_a_dit_without_the_block_protocol_is_refused():
    from sglang_diffusion.cache import check_block_protocol
    from sglang_diffusion.errors import ConfigError

    class OldDiT(torch.nn.Module):
        def forward(self, x, t, context=None):
            return x

    with pytest.raises(ConfigError, match="Cache-DiT: the native OldDiT does not run its blocks through the block"):
        check_block_protocol([OldDiT()], "Cache-DiT")
