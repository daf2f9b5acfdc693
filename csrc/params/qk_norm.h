// RMS norm of rows, the kernel behind ops/qk_norm.py:
//
//   out[r, :] = x[r, :] / sqrt(mean(x[r, :]^2) + eps) * weight
//
// q [B, S, H, D] is rows of G = H*D values (across heads, Wan) or of G = D (per head, FLUX).
// fp32 math.
#pragma once

#include <cstdint>

#include "dtype.h"

namespace sglang_diffusion {

struct RmsRowsParams {
  const void* x = nullptr;        // [rows, width] contiguous, `dtype`
  void* out = nullptr;            // like x
  const float* weight = nullptr;  // [width] or null
  int64_t rows = 0;
  int64_t width = 0;
  float eps = 1e-6f;
  DType dtype = DType::kFloat32;
};

}  // namespace sglang_diffusion
