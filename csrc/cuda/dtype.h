// The storage dtype tag of the CUDA kernels' params structs (no CUDA or torch types, so
// csrc/bindings.cpp can fill it).
#pragma once

#include <cstdint>

namespace sglang_diffusion::cuda {

enum class DType : int8_t { kFloat32, kBFloat16, kFloat16 };

}  // namespace sglang_diffusion::cuda
