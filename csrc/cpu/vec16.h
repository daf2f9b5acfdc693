// What the CPU kernels share: loads and stores of 2 fp32 vectors from/to float, bfloat16 or
// float16 memory (the step of the memory-bound kernels: one 16-bit vector or two fp32 ones),
// a row reduction, and the one switch from the params' DType to the storage type. Lives in
// the inline namespace CPU_CAPABILITY like the kernels that include it (see isa.h): no static
// data, whose initializer would run this build's instructions on any CPU (ATen's
// Note [Do not compile initializers with AVX]).
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <tuple>
#include <type_traits>

#include "../params/dtype.h"

namespace sglang_diffusion::cpu {
inline namespace CPU_CAPABILITY {

// f(T{}) for the storage type T of `dtype`: float, c10::BFloat16 or c10::Half.
template <typename F>
inline void dispatch_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kBFloat16:
      return f(c10::BFloat16{});
    case DType::kFloat16:
      return f(c10::Half{});
    default:
      return f(float{});
  }
}

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

// a * b + c, fused for vectors: the `term` of sum_row for float and fVec alike.
inline fVec madd(const fVec& a, const fVec& b, const fVec& c) {
  return at::vec::fmadd(a, b, c);
}
inline float madd(float a, float b, float c) {
  return a * b + c;
}

// The sum over d < n of v[d]'s term in fp32: term(acc, x) returns acc plus x's term, for
// fVec and float alike (a generic lambda). Four independent accumulators (two steps per
// iteration), so the adds are not serialised on one register's latency.
template <typename T, typename Term>
inline float sum_row(const T* v, int64_t n, const Term& term) {
  fVec acc0(0.0f), acc1(0.0f), acc2(0.0f), acc3(0.0f);
  int64_t d = 0;
  for (; d + 2 * kStep <= n; d += 2 * kStep) {
    fVec a, b, c, e;
    load2(v + d, a, b);
    load2(v + d + kStep, c, e);
    acc0 = term(acc0, a);
    acc1 = term(acc1, b);
    acc2 = term(acc2, c);
    acc3 = term(acc3, e);
  }
  for (; d + kStep <= n; d += kStep) {
    fVec a, b;
    load2(v + d, a, b);
    acc0 = term(acc0, a);
    acc1 = term(acc1, b);
  }
  float sum = sum_lanes((acc0 + acc1) + (acc2 + acc3));
  for (; d < n; ++d) {
    sum = term(sum, static_cast<float>(v[d]));
  }
  return sum;
}

}  // namespace vec16
}  // namespace CPU_CAPABILITY
}  // namespace sglang_diffusion::cpu
