// The dense attention kernel of ../params/attention.h, compiled once per CPU build (isa.h):
// attention.cpp includes it with CPU_CAPABILITY=DEFAULT, attention_avx2.cpp and
// attention_avx512.cpp with their flags. A work item is one (batch, head, block of queries)
// against all keys; the tiles are attention_tiles.h's.
#pragma once

#include <cstdint>

#include "../params/attention.h"
#include "attention_tiles.h"
#include "vec16.h"

namespace sglang_diffusion::cpu {
inline namespace CPU_CAPABILITY {

namespace attn {

template <typename T>
void attention_items_impl(const AttentionParams& p, int64_t block_q, int64_t begin, int64_t end) {
  Scratch scratch(block_q, p.head_dim);
  KvRows<T> kv(p);
  const int64_t q_blocks = (p.seq_q + block_q - 1) / block_q;
  const int64_t all_keys[2] = {0, p.seq_k};
  for (int64_t item = begin; item < end; ++item) {
    const int64_t bh = item / q_blocks;
    const int64_t b = bh / p.heads, h = bh % p.heads;
    const int64_t i0 = (item % q_blocks) * block_q;
    kv.load(p, b, h);
    attention_block<T>(p, b, h, i0, std::min(block_q, p.seq_q - i0), block_q, all_keys, 1, kv, scratch);
  }
}

}  // namespace attn

// Work items [begin, end) of batch * heads * ceil(seq_q / block_q), one thread's share.
void attention_items(const AttentionParams& p, int64_t block_q, int64_t begin, int64_t end) {
  dispatch_dtype(p.dtype, [&](auto tag) { attn::attention_items_impl<decltype(tag)>(p, block_q, begin, end); });
}

}  // namespace CPU_CAPABILITY
}  // namespace sglang_diffusion::cpu
