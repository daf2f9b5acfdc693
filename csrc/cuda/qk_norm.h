// RMS norm of rows on CUDA, behind ops/qk_norm.py (a row is a token's H*D values or one
// head's D values): the params struct and the launcher.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "dtype.h"

namespace sglang_diffusion::cuda {

struct RmsRowsParams {
  const void* x = nullptr;  // [rows, width] contiguous
  void* out = nullptr;
  const float* weight = nullptr;  // [width] or null
  int64_t rows = 0;
  int width = 0;
  float eps = 1e-6f;
  DType dtype = DType::kFloat32;
};

cudaError_t rms_rows(const RmsRowsParams& params, cudaStream_t stream);

}  // namespace sglang_diffusion::cuda
