// Fused norm + adaLN modulation on the CPU: the params struct and the entry point.
//
//   plain:  out = norm(x) * (1 + scale) + shift
//   gated:  residual_out = residual + gate * x  (rounded to the storage dtype)
//           out = norm(residual_out) * (1 + scale) + shift
//
// norm is LayerNorm (biased variance) or RMSNorm over the last dimension, optionally
// times weight plus bias. All arithmetic is fp32. No torch headers here: csrc/bindings.cpp
// checks every tensor and fills the struct.
#pragma once

#include <cstdint>

#include "isa.h"

namespace sglang_diffusion::cpu {

enum class DType : int8_t { kFloat32, kBFloat16, kFloat16 };

// A modulation tensor broadcast to [B, S, D]: row (b, s) starts at
// ptr + b * stride_b + s * stride_s (in elements); its last dimension is contiguous.
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

// Runs the `isa` build (see isa.h), OpenMP-parallel over the B * S rows.
void norm_modulate(const NormModulateParams& params, Isa isa);

}  // namespace sglang_diffusion::cpu
