// Tanh-approximate GELU, the kernel behind ops/activation.py:
//
//   out = 0.5 x (1 + tanh(u)) = x / (1 + exp(-2u)),   u = sqrt(2/pi) (x + 0.044715 x^3)
//
// Elementwise over a flat contiguous buffer; out may be x itself. fp32 math.
#pragma once

#include <cstdint>

#include "dtype.h"

namespace sglang_diffusion {

struct GeluTanhParams {
  const void* x = nullptr;  // [n] contiguous, `dtype`
  void* out = nullptr;      // like x; may be x
  int64_t n = 0;
  DType dtype = DType::kFloat32;
};

}  // namespace sglang_diffusion
