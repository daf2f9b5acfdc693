"""Sliding tile attention under Ulysses sequence parallelism: the tiled Wan DiT on 2 gloo ranks
(each running its own heads' windows) equals one rank."""

from __future__ import annotations

import json

import pytest

from tests.attention.test_sliding_tile import _tiled_wan, joint_inputs, rel_err, sta, wan_folder  # noqa: F401


def _ulysses_case(folder, strategy_path, world):
    from sglang_diffusion.distributed.parallel_state import ParallelLayout, initialize_model_parallel
    from sglang_diffusion.distributed.sharding import SequenceShard

    groups = initialize_model_parallel(ParallelLayout(world, ulysses=world), ranks=range(world))
    if groups is None:
        return None
    return _tiled_wan(folder, strategy_path, SequenceShard(5 * 7 * 9, groups)), _joint(SequenceShard(5 * 7 * 9, groups))


def _joint(shard=None):
    """Joint attention (video tiles + text, HunyuanVideo's) over the tiled layer: gathered outputs."""
    from sglang_diffusion.attention.sliding_tile import TiledSelfAttention
    from sglang_diffusion.ops.sliding_tile_attention import TileLayout

    layout = TileLayout((5, 7, 9), (2, 3, 4))
    (q, k, v), text = joint_inputs(layout)
    tiled = TiledSelfAttention(layout, ((1, 2, 1), (2, 1, 2)), shard)
    backend = sta({"window": "1x1x1"})
    if shard is None:
        return tiled.joint_attention(q, k, v, *text, backend)
    video, text_out = tiled.joint_attention(*(shard.split(t, 1) for t in (q, k, v)), *text, backend)
    return shard.gather(video, 1), text_out


@pytest.mark.slow
def test_ulysses_on_two_ranks_equals_one_rank(tmp_path, wan_folder, pools):
    """Each rank runs its heads' windows (head 0 and 1 differ); 315 tokens do not divide 2 ranks.
    Joint attention with text tokens (HunyuanVideo's) too."""
    entries = {f"0_{l}_{h}": (1, 2, 1) if h == 0 else (2, 1, 2) for l in range(2) for h in range(2)}
    path = tmp_path / "m.json"
    path.write_text(json.dumps({k: list(v) for k, v in entries.items()}))
    path = str(path)
    want, want_joint = _tiled_wan(wan_folder, path), _joint()
    results = pools().run(_ulysses_case, wan_folder, path, 2)
    assert results[2:] == [None, None]
    for got, joint in results[:2]:
        assert rel_err(got, want) <= 1e-5
        assert all(rel_err(a, b) <= 1e-5 for a, b in zip(joint, want_joint))
