// CPU instruction-set builds of the kernels.
//
// A wheel must run on any x86-64 CPU, so the extension is compiled for the baseline ISA and
// each kernel that gains from wider vectors has a second translation unit, <op>_avx2.cpp,
// that includes the same <op>_kernel.h under `#pragma GCC target("avx2,fma,f16c")` with
// CPU_CAPABILITY=AVX2. ATen's Vectorized<T> then uses its AVX2 implementation there, and the
// inline namespace CPU_CAPABILITY (as in ATen) keeps the two builds' symbols apart.
// bindings.cpp picks the build from torch's own CPU capability, so ATEN_CPU_CAPABILITY=default
// selects the portable build too.
#pragma once

#include <cstdint>

// The target pragma is a GCC feature; other compilers get the portable build only.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define SGLD_CPU_HAVE_AVX2_BUILD 1
#else
#define SGLD_CPU_HAVE_AVX2_BUILD 0
#endif

namespace sglang_diffusion::cpu {

enum class Isa : int8_t { kDefault, kAvx2 };

inline const char* isa_name(Isa isa) {
  return isa == Isa::kAvx2 ? "avx2" : "default";
}

}  // namespace sglang_diffusion::cpu
