"""Sliding tile attention in the HunyuanVideo DiT under Ulysses sequence parallelism: 2 gloo
ranks (each running its own heads' windows, the text replicated) equal one rank."""

from __future__ import annotations

import json

import pytest

from tests.models.test_hunyuan_video_sliding_tile import _tiled, folder, rel_err  # noqa: F401


def _ulysses_case(folder, strategy_path, world):
    from sglang_diffusion.distributed.parallel_state import ParallelLayout, initialize_model_parallel
    from sglang_diffusion.distributed.sharding import SequenceShard

    groups = initialize_model_parallel(ParallelLayout(world, ulysses=world), ranks=range(world))
    if groups is None:
        return None
    return _tiled(folder, strategy_path, SequenceShard(3 * 7 * 7, groups))


@pytest.mark.slow
def test_ulysses_on_two_ranks_equals_one_rank(folder, tmp_path, pools):
    """Each rank runs its head's windows (heads 0 and 1 differ); 147 tokens do not divide 2 ranks."""
    path = tmp_path / "mask.json"
    path.write_text(json.dumps({f"0_{l}_{h}": [1, 2, 1] if h == 0 else [2, 1, 2] for l in range(4)
                                for h in range(2)}))
    want = _tiled(folder, str(path))
    results = pools().run(_ulysses_case, folder, str(path), 2)
    assert all(r is None for r in results[2:])
    for got in results[:2]:
        assert rel_err(got, want) <= 1e-5
