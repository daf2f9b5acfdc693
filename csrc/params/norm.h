// Norm fused with adaLN modulation (ops/norm.py):
//
//   plain:  out = norm(x) * (1 + scale) + shift
//   gated:  residual_out = residual + gate * x  (rounded to the storage dtype)
//           out = norm(residual_out) * (1 + scale) + shift
//
// norm is LayerNorm (biased variance) or RMSNorm over the last dimension, optionally times
// weight plus bias. All arithmetic is fp32.
#pragma once

#include <cstdint>

#include "dtype.h"

namespace sglang_diffusion {

// A modulation tensor broadcast to [B, S, D]: row (b, s) starts at
// ptr + b * stride_b + s * stride_s; its last dimension is contiguous.
struct ModParam {
  const void* ptr = nullptr;
  int64_t stride_b = 0;
  int64_t stride_s = 0;
};

struct NormModulateParams {
  const void* x = nullptr;  // [B, S, D] contiguous, `dtype`
  void* out = nullptr;      // [B, S, D] contiguous, `dtype`
  // Gated variant only (null for the plain op): [B, S, D] contiguous, `dtype`.
  const void* residual = nullptr;
  void* residual_out = nullptr;  // may alias residual
  ModParam gate;                 // gated variant; ptr null means gate = 1
  ModParam scale;
  ModParam shift;
  const float* weight = nullptr;  // [D] or null
  const float* bias = nullptr;    // [D] or null
  int64_t batch = 0;
  int64_t seq_len = 0;
  int64_t dim = 0;
  float eps = 1e-6f;
  bool rms = false;
  DType dtype = DType::kFloat32;      // x, out, residual, residual_out
  DType mod_dtype = DType::kFloat32;  // gate, scale, shift: `dtype` or kFloat32
};

}  // namespace sglang_diffusion
