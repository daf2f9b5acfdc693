// The activation dtypes the CPU kernels take (shared by their params structs).
#pragma once

#include <cstdint>

namespace sglang_diffusion::cpu {

enum class ActDType : int8_t { kFloat32, kBFloat16, kFloat16 };

}  // namespace sglang_diffusion::cpu
