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

SGLD_CPU_ISA_BUILDS(sliding_tile_attention_items)

void sliding_tile_attention(const SlidingTileAttentionParams& p, Isa isa) {
  // Blocks evened out within a group: a 384-token tile is 3 x 128, a 200-token one 2 x 100.
  std::vector<QueryBlock> blocks;
  int64_t block_q = attn::kNR;
  for (int64_t g = 0; g < p.groups; ++g) {
    const int64_t start = p.q_groups[2 * g], len = p.q_groups[2 * g + 1] - start;
    const int64_t n = (len + kAttnBlockQ - 1) / kAttnBlockQ;
    for (int64_t j = 0; j < n; ++j) {
      const QueryBlock blk{start + len * j / n, start + len * (j + 1) / n, g};
      blocks.push_back(blk);
      block_q = std::max(block_q, (blk.end - blk.start + attn::kNR - 1) / attn::kNR * attn::kNR);
    }
  }
  const int64_t num_blocks = static_cast<int64_t>(blocks.size());
  parallel_rows(SGLD_CPU_BUILD(sliding_tile_attention_items, isa), p.attn.batch * p.attn.heads * num_blocks, 1,
                p, blocks.data(), num_blocks, block_q);
}

}  // namespace sglang_diffusion::cpu
