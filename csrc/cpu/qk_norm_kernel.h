// The RMS row kernel of ../params/qk_norm.h, compiled once per CPU build (isa.h): qk_norm.cpp
// includes it with CPU_CAPABILITY=DEFAULT, qk_norm_avx2.cpp and qk_norm_avx512.cpp with their
// flags. Two passes per row, the second reading L1: sum of squares in fp32 (vec16::sum_row),
// then the scaled store.
#pragma once

#include <cmath>
#include <cstdint>

#include "../params/qk_norm.h"
#include "vec16.h"

namespace sglang_diffusion::cpu {
inline namespace CPU_CAPABILITY {

namespace qk_norm_impl {

using vec16::fVec;
using vec16::kStep;

template <typename T>
void rms_rows_impl(const RmsRowsParams& p, int64_t begin, int64_t end) {
  const int64_t width = p.width;
  const int64_t half = fVec::size();
  for (int64_t r = begin; r < end; ++r) {
    const T* x = static_cast<const T*>(p.x) + r * width;
    T* out = static_cast<T*>(p.out) + r * width;
    const float sum_sq = vec16::sum_row(x, width, [](auto acc, auto v) { return vec16::madd(v, v, acc); });
    const float rstd = 1.0f / std::sqrt(sum_sq / static_cast<float>(width) + p.eps);
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
  dispatch_dtype(p.dtype, [&](auto tag) { qk_norm_impl::rms_rows_impl<decltype(tag)>(p, begin, end); });
}

}  // namespace CPU_CAPABILITY
}  // namespace sglang_diffusion::cpu
