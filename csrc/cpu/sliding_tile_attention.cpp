// Sliding tile attention forward (../params/sliding_tile_attention.h): the portable build of
// sliding_tile_attention_kernel.h and the entry point (dispatch.h), which cuts each query group
// into blocks of at most kAttnBlockQ queries.
#define CPU_CAPABILITY DEFAULT
#define CPU_CAPABILITY_DEFAULT

#include <algorithm>
#include <vector>

#include "dispatch.h"
#include "ops.h"
#include "sliding_tile_attention_kernel.h"

namespace sglang_diffusion::cpu {

SGLD_CPU_ISA_BUILDS(sliding_tile_query_width)
SGLD_CPU_ISA_BUILDS(sliding_tile_attention_items)

void sliding_tile_attention(const SlidingTileAttentionParams& p, Isa isa) {
  // A group in as few blocks as kAttnBlockQ allows, each a multiple of the chosen build's
  // micro-tile width but the last: with width 16, a 360-token tile is 128 + 128 + 104 (112
  // computed), a 200-token one 112 + 88 (96), so padding costs at most width - 1 queries per
  // tile. The width is the build's, not this portable unit's: AVX-512 computes 32 queries at a
  // time and its scratch must hold the rounded blocks.
  const int64_t width = SGLD_CPU_BUILD(sliding_tile_query_width, isa)();
  const auto round_up = [width](int64_t n) { return (n + width - 1) / width * width; };
  std::vector<QueryBlock> blocks;
  int64_t block_q = width;
  for (int64_t g = 0; g < p.groups; ++g) {
    const int64_t start = p.q_groups[2 * g], end = p.q_groups[2 * g + 1];
    const int64_t n = (end - start + kAttnBlockQ - 1) / kAttnBlockQ;
    const int64_t step = n > 0 ? round_up((end - start + n - 1) / n) : 0;
    for (int64_t lo = start; lo < end; lo += step) {
      blocks.push_back({lo, std::min(end, lo + step), g});
    }
    block_q = std::max(block_q, step);
  }
  const int64_t num_blocks = static_cast<int64_t>(blocks.size());
  parallel_rows(SGLD_CPU_BUILD(sliding_tile_attention_items, isa), p.attn.batch * p.attn.heads * num_blocks, 1,
                p, blocks.data(), num_blocks, block_q);
}

}  // namespace sglang_diffusion::cpu
