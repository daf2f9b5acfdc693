// Rotary position embedding of q and k (ops/rope.py):
//
//   pairs (x1, x2) -> (x1 cos - x2 sin, x1 sin + x2 cos), pair i of token s rotated by
//   cos[s, i], sin[s, i]; pairs interleaved (x[2i], x[2i+1]) or half-split (x[i], x[i+D/2]).
//
// fp32 math.
#pragma once

#include <cstdint>

#include "dtype.h"

namespace sglang_diffusion {

struct RopeParams {
  const void* q = nullptr;     // [B, S, Hq, D] contiguous, `dtype`
  const void* k = nullptr;     // [B, S, Hk, D] contiguous, `dtype`
  void* q_out = nullptr;       // like q (may alias q)
  void* k_out = nullptr;       // like k (may alias k)
  const float* cos = nullptr;  // [S, D/2] contiguous
  const float* sin = nullptr;  // [S, D/2] contiguous
  int64_t batch = 0;
  int64_t seq_len = 0;
  int64_t heads_q = 0;
  int64_t heads_k = 0;
  int64_t head_dim = 0;  // even
  bool interleaved = true;
  DType dtype = DType::kFloat32;
};

}  // namespace sglang_diffusion
