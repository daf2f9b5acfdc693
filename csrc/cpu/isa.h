// CPU instruction-set builds of the kernels.
//
// A wheel must run on any x86-64 CPU, so the extension is compiled for the baseline ISA, and a
// kernel that gains from wider vectors has a second translation unit, <op>_avx2.cpp, that
// includes the same <op>_kernel.h. setup.py compiles each *_avx2.cpp on its own with
// -mavx2 -mfma -mf16c -DCPU_CAPABILITY=AVX2 -DCPU_CAPABILITY_AVX2 (x86-64 only, where it also
// defines SGLD_CPU_HAVE_AVX2_BUILD=1 for every unit), as ATen builds its own kernels: ATen's
// Vectorized<T> then uses its AVX2 implementation, and the inline namespace CPU_CAPABILITY
// keeps the two builds' symbols apart. bindings.cpp picks the build from torch's own CPU
// capability, so ATEN_CPU_CAPABILITY=default selects the portable build too.
#pragma once

#include <cstdint>

#ifndef SGLD_CPU_HAVE_AVX2_BUILD
#define SGLD_CPU_HAVE_AVX2_BUILD 0
#endif

namespace sglang_diffusion::cpu {

enum class Isa : int8_t { kDefault, kAvx2 };

inline const char* isa_name(Isa isa) {
  return isa == Isa::kAvx2 ? "avx2" : "default";
}

}  // namespace sglang_diffusion::cpu
