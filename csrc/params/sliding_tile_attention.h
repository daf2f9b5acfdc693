// Sliding tile attention forward with its log-sum-exp (ops/sliding_tile_attention.py):
// attention in which each group of queries (a tile of the video grid, or the text tokens)
// attends only to its own runs of keys, given as [start, end) ranges over the sequence.
//
//   out[b, i, h, :] = sum_{j in runs(h, g(i))} softmax_j(scale * q[b, i, h, :] . k[b, j, h, :]) v[b, j, h, :]
//   lse[b, h, i]    = log sum_{j in runs(h, g(i))} exp(scale * q[b, i, h, :] . k[b, j, h, :])
//
// A kernel visits only the keys inside the runs: the work is the window's, not the grid's.
#pragma once

#include <cstdint>

#include "attention.h"

namespace sglang_diffusion {

struct SlidingTileAttentionParams {
  AttentionParams attn;                // q, k, v, out, lse as for attention; seq_q == seq_k
  const int64_t* q_groups = nullptr;   // [groups, 2]: group g is queries [start, end)
  const int64_t* kv_ranges = nullptr;  // [heads, groups, runs, 2]: key runs [start, end), empty ones start == end
  int64_t groups = 0;
  int64_t runs = 0;
};

}  // namespace sglang_diffusion
