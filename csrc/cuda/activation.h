// Tanh-approximate GELU on CUDA, behind ops/activation.py: the params struct and the launcher.
//
//   out = x / (1 + exp(-2u)),   u = sqrt(2/pi) (x + 0.044715 x^3)
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "dtype.h"

namespace sglang_diffusion::cuda {

struct GeluTanhParams {
  const void* x = nullptr;  // [n] contiguous
  void* out = nullptr;      // like x; may be x
  int64_t n = 0;
  DType dtype = DType::kFloat32;
};

cudaError_t gelu_tanh(const GeluTanhParams& params, cudaStream_t stream);

}  // namespace sglang_diffusion::cuda
