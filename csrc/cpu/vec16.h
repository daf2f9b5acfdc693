// Loads and stores of 2 fp32 vectors from/to float, bfloat16 or float16 memory: the step of
// the memory-bound kernels (rope, qk_norm), one 16-bit vector or two fp32 ones. Lives in the
// inline namespace CPU_CAPABILITY like the kernels that include it (see isa.h).
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <tuple>
#include <type_traits>

namespace sglang_diffusion::cpu {
inline namespace CPU_CAPABILITY {
namespace vec16 {

using fVec = at::vec::Vectorized<float>;
constexpr int64_t kStep = 2 * fVec::size();

template <typename T>
inline void load2(const T* p, fVec& a, fVec& b) {
  if constexpr (std::is_same_v<T, float>) {
    a = fVec::loadu(p);
    b = fVec::loadu(p + fVec::size());
  } else {
    static_assert(at::vec::Vectorized<T>::size() == kStep);
    std::tie(a, b) = at::vec::convert_to_float<T>(at::vec::Vectorized<T>::loadu(p));
  }
}

template <typename T>
inline void store2(T* p, const fVec& a, const fVec& b) {
  if constexpr (std::is_same_v<T, float>) {
    a.store(p);
    b.store(p + fVec::size());
  } else {
    at::vec::convert_from_float<T>(a, b).store(p);
  }
}

inline float sum_lanes(const fVec& v) {
  return at::vec::vec_reduce_all<float>([](const fVec& a, const fVec& b) { return a + b; }, v);
}

}  // namespace vec16
}  // namespace CPU_CAPABILITY
}  // namespace sglang_diffusion::cpu
