// The sliding tile attention kernel of ../params/sliding_tile_attention.h, compiled once per
// CPU build (isa.h): sliding_tile_attention.cpp includes it with CPU_CAPABILITY=DEFAULT,
// sliding_tile_attention_avx2.cpp and _avx512.cpp with their flags.
//
// The tiles are attention_tiles.h's (the online softmax and the 6 x 16 micro-kernels); what
// differs from dense attention is the key loop: a work item (batch, head, query block of one
// group) runs attention_block over its group's key runs only, so keys outside the window are
// never read. A query block is rounded up to the micro-kernel width (kNR), not to kAttnBlockQ,
// so the partial tiles at the grid's borders cost what they hold.
#pragma once

#include <cstdint>

#include "../params/sliding_tile_attention.h"
#include "attention_tiles.h"
#include "vec16.h"

namespace sglang_diffusion::cpu {

// Queries [start, end) of one group, at most kAttnBlockQ of them: one work item per batch and head.
struct QueryBlock {
  int64_t start = 0, end = 0, group = 0;
};

inline namespace CPU_CAPABILITY {

namespace sta {

template <typename T>
void items_impl(const SlidingTileAttentionParams& sp, const QueryBlock* blocks, int64_t num_blocks,
                int64_t block_q, int64_t begin, int64_t end) {
  const AttentionParams& p = sp.attn;
  attn::Scratch scratch(block_q, p.head_dim);
  attn::KvRows<T> kv(p);  // a thread's items are consecutive: each (batch, head) is loaded once
  for (int64_t item = begin; item < end; ++item) {
    const int64_t bh = item / num_blocks;
    const int64_t b = bh / p.heads, h = bh % p.heads;
    const QueryBlock& blk = blocks[item % num_blocks];
    const int64_t mq = blk.end - blk.start;
    const int64_t bq = (mq + attn::kNR - 1) / attn::kNR * attn::kNR;
    kv.load(p, b, h);
    const int64_t* runs = sp.kv_ranges + (h * sp.groups + blk.group) * sp.runs * 2;
    attn::attention_block<T>(p, b, h, blk.start, mq, bq, runs, sp.runs, kv, scratch);
  }
}

}  // namespace sta

// The width this build computes query blocks in (its micro-tile width kNR: 16 on AVX2 and the
// portable build, 32 on AVX-512): the entry point cuts the groups in multiples of it.
int64_t sliding_tile_query_width() { return attn::kNR; }

// Work items [begin, end) of batch * heads * num_blocks, one thread's share; block_q: the
// longest block, a multiple of sliding_tile_query_width().
void sliding_tile_attention_items(const SlidingTileAttentionParams& sp, const QueryBlock* blocks,
                                  int64_t num_blocks, int64_t block_q, int64_t begin, int64_t end) {
  dispatch_dtype(sp.attn.dtype, [&](auto tag) {
    sta::items_impl<decltype(tag)>(sp, blocks, num_blocks, block_q, begin, end);
  });
}

}  // namespace CPU_CAPABILITY
}  // namespace sglang_diffusion::cpu
