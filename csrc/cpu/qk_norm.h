// RMS norm of rows on the CPU, the kernel behind ops/qk_norm.py: the params struct and the
// entry point.
//
//   out[r, :] = x[r, :] / sqrt(mean(x[r, :]^2) + eps) * weight
//
// q [B, S, H, D] is rows of G = H*D values (across heads, Wan) or of G = D (per head, FLUX).
// fp32 math; no torch headers (bindings.cpp checks and fills the struct).
#pragma once

#include <cstdint>

#include "dtype.h"
#include "isa.h"

namespace sglang_diffusion::cpu {

struct RmsRowsParams {
  const void* x = nullptr;  // [rows, width] contiguous, `dtype`
  void* out = nullptr;      // like x
  const float* weight = nullptr;  // [width] or null
  int64_t rows = 0;
  int64_t width = 0;
  float eps = 1e-6f;
  ActDType dtype = ActDType::kFloat32;
};

// OpenMP-parallel over the rows; runs the `isa` build (isa.h).
void rms_rows(const RmsRowsParams& params, Isa isa);

}  // namespace sglang_diffusion::cpu
