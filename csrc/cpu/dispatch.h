// The one way a CPU op's entry point runs its kernel: pick the build for the ISA (isa.h), then
// hand chunks of the work to torch's OpenMP threads. An op's .cpp (the portable unit, which
// defines CPU_CAPABILITY=DEFAULT before including its <op>_kernel.h) says only what is its own:
//
//   SGLD_CPU_ISA_BUILDS(rms_rows)  // declares AVX2::rms_rows and AVX512::rms_rows
//
//   void rms_rows(const RmsRowsParams& p, Isa isa) {
//     parallel_rows(SGLD_CPU_BUILD(rms_rows, isa), p.rows, rows_per_task(p.width), p);
//   }
//
// where the kernel header defines, in its inline namespace CPU_CAPABILITY, a chunk function
// `void rms_rows(const RmsRowsParams& p, int64_t begin, int64_t end)` (any leading arguments,
// then the chunk [begin, end)).
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

#include "isa.h"

namespace sglang_diffusion::cpu {

// The build of a chunk function for `isa`; null entries are builds this platform lacks, which
// active_isa() never returns.
template <typename Fn>
Fn pick_build(Isa isa, Fn portable, Fn avx2, Fn avx512) {
  switch (isa) {
    case Isa::kAvx512:
      return avx512;
    case Isa::kAvx2:
      return avx2;
    default:
      return portable;
  }
}

// fn(args..., begin, end) over [0, n), split into tasks of at least `grain` on torch's threads.
template <typename Fn, typename... Args>
void parallel_rows(Fn fn, int64_t n, int64_t grain, const Args&... args) {
  at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) { fn(args..., begin, end); });
}

// Rows per task so that a task has at least ~32K values: smaller ones cost more to hand out
// than to run.
inline int64_t rows_per_task(int64_t values_per_row) {
  return std::max<int64_t>(1, (int64_t{1} << 15) / std::max<int64_t>(1, values_per_row));
}

}  // namespace sglang_diffusion::cpu

// Declares the x86 builds of the chunk function `fn` (same type as the portable DEFAULT::fn);
// at namespace sglang_diffusion::cpu scope.
#if SGLD_CPU_X86_BUILDS
#define SGLD_CPU_ISA_BUILDS(fn)                                                                  \
  namespace AVX2 {                                                                               \
  decltype(DEFAULT::fn) fn;                                                                      \
  }                                                                                              \
  namespace AVX512 {                                                                             \
  decltype(DEFAULT::fn) fn;                                                                      \
  }
#define SGLD_CPU_BUILD(fn, isa) \
  ::sglang_diffusion::cpu::pick_build<decltype(&DEFAULT::fn)>(isa, &DEFAULT::fn, &AVX2::fn, &AVX512::fn)
#else
#define SGLD_CPU_ISA_BUILDS(fn)
#define SGLD_CPU_BUILD(fn, isa) \
  ::sglang_diffusion::cpu::pick_build<decltype(&DEFAULT::fn)>(isa, &DEFAULT::fn, nullptr, nullptr)
#endif
