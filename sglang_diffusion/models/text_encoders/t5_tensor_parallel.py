"""Tensor parallelism for transformers' T5 / UMT5 encoders (Wan's UMT5-XXL, FLUX.1's T5-XXL),
applied in place to a loaded model:

- attention: q, k, v column-parallel (each rank keeps whole heads), o row-parallel (one
  all-reduce), the relative position bias table cut to the rank's heads;
- feed-forward: wi / wi_0 / wi_1 column-parallel, wo row-parallel (one all-reduce);
- the token embedding vocab-parallel (UMT5's 256k x 4096 table is ~2 GB in bf16).

Layer norms and everything between the pairs stay replicated, so every rank ends with the same
hidden states. transformers' modules read `n_heads` / `inner_dim` to reshape, so those are set to
the per-rank values.
"""

from __future__ import annotations

import logging

from torch import nn

from sglang_diffusion.errors import ConfigError
from sglang_diffusion.layers.tp_linear import ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding

logger = logging.getLogger(__name__)


def _is_attention(m: nn.Module) -> bool:
    return all(hasattr(m, a) for a in ("q", "k", "v", "o", "n_heads", "key_value_proj_dim"))


def _is_mlp(m: nn.Module) -> bool:
    return hasattr(m, "wo") and (hasattr(m, "wi") or hasattr(m, "wi_0"))


def shard_t5_encoder(model: nn.Module, group) -> nn.Module:
    """Keep this rank's part of a T5EncoderModel / UMT5EncoderModel for the TP `group`
    (a RankGroup); a group of one leaves the model as it is."""
    tp = group.size
    if tp == 1:
        return model
    config = model.config
    for name, value in (("num_heads", config.num_heads), ("d_ff", config.d_ff)):
        if value % tp:
            raise ConfigError(f"tp_size {tp} does not divide the text encoder's {name} ({value})")
    attentions = mlps = 0
    for module in list(model.modules()):
        if _is_attention(module):
            heads = module.n_heads // tp
            module.q, module.k, module.v = (ColumnParallelLinear.from_linear(getattr(module, n), group)
                                           for n in ("q", "k", "v"))
            module.o = RowParallelLinear.from_linear(module.o, group)
            if getattr(module, "has_relative_attention_bias", False):
                table = module.relative_attention_bias  # [buckets, heads]
                local = nn.Embedding(table.num_embeddings, heads, device=table.weight.device, dtype=table.weight.dtype)
                local.weight.data.copy_(table.weight.data[:, group.rank * heads:(group.rank + 1) * heads])
                module.relative_attention_bias = local.requires_grad_(False)
            module.n_heads, module.inner_dim = heads, heads * module.key_value_proj_dim
            attentions += 1
        elif _is_mlp(module):
            for n in ("wi", "wi_0", "wi_1"):
                if hasattr(module, n):
                    setattr(module, n, ColumnParallelLinear.from_linear(getattr(module, n), group))
            module.wo = RowParallelLinear.from_linear(module.wo, group)
            mlps += 1
    model.set_input_embeddings(VocabParallelEmbedding.from_embedding(model.get_input_embeddings(), group))
    logger.info("text encoder %s split over tp=%d: %d attention layers, %d MLPs, vocab-parallel embedding "
                "(this rank: %d of %d heads)", type(model).__name__, tp, attentions, mlps, config.num_heads // tp,
                config.num_heads)
    return model
