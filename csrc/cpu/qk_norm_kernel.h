// The RMS row kernel of qk_norm.h, compiled once per CPU build (isa.h): qk_norm.cpp includes
// it with CPU_CAPABILITY=DEFAULT, qk_norm_avx2.cpp with CPU_CAPABILITY=AVX2. Two passes per
// row, the second reading L1: sum of squares in fp32 (four accumulators, so the adds do not
// serialise on one register), then the scaled store.
#pragma once

#include <cmath>
#include <cstdint>

#include "qk_norm.h"
#include "vec16.h"

namespace sglang_diffusion::cpu {
inline namespace CPU_CAPABILITY {

namespace qk_norm_impl {

using vec16::fVec;
using vec16::kStep;

template <typename T>
inline float sum_sq(const T* x, int64_t width) {
  fVec acc0(0.0f), acc1(0.0f), acc2(0.0f), acc3(0.0f);
  int64_t d = 0;
  for (; d + 2 * kStep <= width; d += 2 * kStep) {
    fVec a, b, c, e;
    vec16::load2(x + d, a, b);
    vec16::load2(x + d + kStep, c, e);
    acc0 = at::vec::fmadd(a, a, acc0);
    acc1 = at::vec::fmadd(b, b, acc1);
    acc2 = at::vec::fmadd(c, c, acc2);
    acc3 = at::vec::fmadd(e, e, acc3);
  }
  for (; d + kStep <= width; d += kStep) {
    fVec a, b;
    vec16::load2(x + d, a, b);
    acc0 = at::vec::fmadd(a, a, acc0);
    acc1 = at::vec::fmadd(b, b, acc1);
  }
  float sum = vec16::sum_lanes((acc0 + acc1) + (acc2 + acc3));
  for (; d < width; ++d) {
    const float v = static_cast<float>(x[d]);
    sum += v * v;
  }
  return sum;
}

template <typename T>
void rms_rows_impl(const RmsRowsParams& p, int64_t begin, int64_t end) {
  const int64_t width = p.width;
  const int64_t half = fVec::size();
  for (int64_t r = begin; r < end; ++r) {
    const T* x = static_cast<const T*>(p.x) + r * width;
    T* out = static_cast<T*>(p.out) + r * width;
    const float rstd = 1.0f / std::sqrt(sum_sq(x, width) / static_cast<float>(width) + p.eps);
    const fVec vr(rstd);
    int64_t d = 0;
    for (; d + kStep <= width; d += kStep) {
      fVec a, b;
      vec16::load2(x + d, a, b);
      a = a * vr;
      b = b * vr;
      if (p.weight != nullptr) {
        a = a * fVec::loadu(p.weight + d);
        b = b * fVec::loadu(p.weight + d + half);
      }
      vec16::store2(out + d, a, b);
    }
    for (; d < width; ++d) {
      const float w = p.weight != nullptr ? p.weight[d] : 1.0f;
      out[d] = static_cast<T>(static_cast<float>(x[d]) * rstd * w);
    }
  }
}

}  // namespace qk_norm_impl

// Rows [begin, end), one thread's share.
void rms_rows(const RmsRowsParams& p, int64_t begin, int64_t end) {
  switch (p.dtype) {
    case ActDType::kFloat32:
      return qk_norm_impl::rms_rows_impl<float>(p, begin, end);
    case ActDType::kBFloat16:
      return qk_norm_impl::rms_rows_impl<c10::BFloat16>(p, begin, end);
    case ActDType::kFloat16:
      return qk_norm_impl::rms_rows_impl<c10::Half>(p, begin, end);
  }
}

}  // namespace CPU_CAPABILITY
}  // namespace sglang_diffusion::cpu
