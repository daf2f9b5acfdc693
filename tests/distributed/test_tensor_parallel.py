"""Tensor-parallel T5 / UMT5 text encoders (transformers' classes and our UMT5, sharded in place) in gloo
processes: the same hidden states as the whole encoder on one process, at tp = 2 and 4; the
layers alone; sizes that do not divide refused clearly."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from sglang_diffusion.distributed.parallel_state import ParallelLayout, RankGroup, initialize_model_parallel
from sglang_diffusion.errors import ConfigError
from sglang_diffusion.layers.tp_linear import ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding
from sglang_diffusion.models.text_encoders.t5_tensor_parallel import shard_t5_encoder
from tests.distributed import pool
from tests.distributed.pool import backends

TOL = 1e-5


def _encoder(kind: str, heads: int = 4, vocab: int = 101):
    """A small random encoder, identical on every rank (seeded). vocab 101 splits unevenly."""
    from transformers import T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    cls, config_cls = {"umt5": (UMT5EncoderModel, UMT5Config), "t5": (T5EncoderModel, T5Config),
                       "native-umt5": (UMT5EncoderModel, UMT5Config)}[kind]
    config = config_cls(vocab_size=vocab, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=heads,
                        relative_attention_num_buckets=32, feed_forward_proj="gated-gelu", dropout_rate=0.0)
    torch.manual_seed(0)
    model = cls(config).eval()
    if kind != "native-umt5":
        return model
    import tempfile
    from pathlib import Path

    from safetensors.torch import save_file

    from sglang_diffusion.models.text_encoders.umt5 import UMT5EncoderModel as NativeUMT5

    with tempfile.TemporaryDirectory() as folder:  # our encoder from the same weights (save_pretrained writes on rank 0 only)
        model.config.to_json_file(Path(folder) / "config.json")
        save_file({k: v.clone() for k, v in model.state_dict().items()}, Path(folder) / "model.safetensors")
        return NativeUMT5.from_pretrained(folder)


def _inputs(vocab: int = 101):
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (2, 13), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0  # a padded prompt
    return ids, mask


def encoder_case(world, tp, kind):
    """Hidden states of the TP-sharded encoder vs the whole one: relative error (None outside)."""
    groups = initialize_model_parallel(ParallelLayout(world, tp=tp), ranks=range(world))
    if groups is None:
        return None
    model = _encoder(kind).to(pool.device())
    ids, mask = (t.to(pool.device()) for t in _inputs())
    with torch.inference_mode():
        want = model(ids, attention_mask=mask).last_hidden_state
        shard_t5_encoder(model, groups.tp)
        got = model(ids, attention_mask=mask).last_hidden_state
    heads = {m.n_heads for m in model.modules() if hasattr(m, "n_heads")}
    return ((got - want).abs().max() / want.abs().max()).item(), heads, groups.tp.ranks


def layers_case():
    """Column then row parallel = the two whole linears; vocab-parallel embedding = the table."""
    me, world = dist.get_rank(), dist.get_world_size()
    group = RankGroup(tuple(range(world)), me, dist.group.WORLD)
    torch.manual_seed(0)
    first, second, table = torch.nn.Linear(8, 12), torch.nn.Linear(12, 5), torch.nn.Embedding(10, 6)
    x, ids = torch.randn(3, 8), torch.tensor([[0, 3, 9], [7, 2, 5]])
    want = second(torch.relu(first(x)))
    got = RowParallelLinear.from_linear(second, group)(torch.relu(ColumnParallelLinear.from_linear(first, group)(x)))
    emb = VocabParallelEmbedding.from_embedding(table, group)(ids)
    return (got - want).abs().max().item(), torch.equal(emb, table(ids))


@pytest.mark.parametrize("backend", backends(4))
@pytest.mark.parametrize("kind", ["umt5", "t5", "native-umt5"])
def test_tp_text_encoder_matches_the_whole_encoder(pools, backend, kind):
    # tp=2 on 2 ranks; tp=4 on 4 ranks (one head each); tp=2 on 4 ranks (two TP groups)
    for world, tp in ((4, 2),) if kind == "native-umt5" else ((2, 2), (4, 4), (4, 2)):  # ours: the same sharder
        results = pools(backend).run(encoder_case, world, tp, kind)
        for rank, (err, heads, tp_ranks) in enumerate(results[:world]):
            assert err < TOL, (world, tp, rank, err)
            assert heads == {4 // tp}
            assert tp_ranks == tuple(range(rank // tp * tp, rank // tp * tp + tp))


def test_tp_layers_match_the_whole_layers(pools):
    for err, embedding_exact in pools().run(layers_case):
        assert err < TOL and embedding_exact


def test_tp_size_that_does_not_divide_the_heads_is_refused():
    group = RankGroup((0, 1, 2), 0, None)
    with pytest.raises(ConfigError, match=r"tp_size 3 does not divide the text encoder's num_heads \(4\)"):
        shard_t5_encoder(_encoder("umt5"), group)
