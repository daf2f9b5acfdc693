// Norm + adaLN modulation on CUDA, behind ops/norm.py: the params struct and the launcher.
//   plain:  out = norm(x) * (1 + scale) + shift
//   gated:  residual_out = residual + gate * x (rounded to the storage dtype); out = norm of it
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "dtype.h"

namespace sglang_diffusion::cuda {

// A modulation tensor broadcast to [B, S, D]: row (b, s) at ptr + b * stride_b + s * stride_s.
struct ModParam {
  const void* ptr = nullptr;
  int64_t stride_b = 0;
  int64_t stride_s = 0;
};

struct NormModulateParams {
  const void* x = nullptr;        // [B, S, D] contiguous, `dtype`
  void* out = nullptr;
  const void* residual = nullptr;  // gated variant only
  void* residual_out = nullptr;
  ModParam gate;  // ptr null: gate = 1
  ModParam scale;
  ModParam shift;
  const float* weight = nullptr;  // [D] or null
  const float* bias = nullptr;
  int64_t batch = 0;
  int64_t seq_len = 0;
  int dim = 0;
  float eps = 1e-6f;
  bool rms = false;
  DType dtype = DType::kFloat32;
  DType mod_dtype = DType::kFloat32;  // `dtype` or kFloat32
};

cudaError_t norm_modulate(const NormModulateParams& params, cudaStream_t stream);

}  // namespace sglang_diffusion::cuda
