// The kernels' params structs (csrc/params/*.h): one struct per op, filled by csrc/bindings.cpp
// and read by the CPU kernel (csrc/cpu) and the CUDA kernel (csrc/cuda) alike. Plain C++: no
// torch or CUDA headers, so nvcc compiles the .cu files alone. Sizes and strides are in
// elements, int64_t.
#pragma once

#include <cstdint>

namespace sglang_diffusion {

// The storage dtype of an op's activations.
enum class DType : int8_t { kFloat32, kBFloat16, kFloat16 };

}  // namespace sglang_diffusion
