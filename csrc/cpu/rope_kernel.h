// The RoPE row kernel of ../params/rope.h, compiled once per CPU build (isa.h): rope.cpp
// includes it with CPU_CAPABILITY=DEFAULT, rope_avx2.cpp and rope_avx512.cpp with their flags.
// One token's q and k heads share one row of the tables, which stays in L1 while every head
// is rotated.
#pragma once

#include <cstdint>

#include "../params/rope.h"
#include "vec16.h"

namespace sglang_diffusion::cpu {
inline namespace CPU_CAPABILITY {

namespace rope_impl {

using vec16::fVec;
using vec16::kStep;
constexpr int64_t kLanes = fVec::size();

// One head vector of D values.
template <typename T>
inline void rotate_head(const T* x, T* out, const float* c, const float* s, int64_t dim, bool interleaved) {
  const int64_t half = dim / 2;
  int64_t j = 0;  // pair index
  if (interleaved) {
    // kStep values = kLanes pairs per step: split the pairs into lanes of x1 and x2.
    for (; j + kLanes <= half; j += kLanes) {
      fVec a, b;
      vec16::load2(x + 2 * j, a, b);
      auto [x1, x2] = at::vec::deinterleave2(a, b);
      const fVec cj = fVec::loadu(c + j), sj = fVec::loadu(s + j);
      const fVec o1 = at::vec::fmsub(x1, cj, x2 * sj);
      const fVec o2 = at::vec::fmadd(x1, sj, x2 * cj);
      auto [oa, ob] = at::vec::interleave2(o1, o2);
      vec16::store2(out + 2 * j, oa, ob);
    }
    for (; j < half; ++j) {
      const float x1 = static_cast<float>(x[2 * j]), x2 = static_cast<float>(x[2 * j + 1]);
      out[2 * j] = static_cast<T>(x1 * c[j] - x2 * s[j]);
      out[2 * j + 1] = static_cast<T>(x1 * s[j] + x2 * c[j]);
    }
    return;
  }
  for (; j + kStep <= half; j += kStep) {
    fVec x1a, x1b, x2a, x2b;
    vec16::load2(x + j, x1a, x1b);
    vec16::load2(x + half + j, x2a, x2b);
    const fVec ca = fVec::loadu(c + j), cb = fVec::loadu(c + j + kLanes);
    const fVec sa = fVec::loadu(s + j), sb = fVec::loadu(s + j + kLanes);
    vec16::store2(out + j, at::vec::fmsub(x1a, ca, x2a * sa), at::vec::fmsub(x1b, cb, x2b * sb));
    vec16::store2(out + half + j, at::vec::fmadd(x1a, sa, x2a * ca), at::vec::fmadd(x1b, sb, x2b * cb));
  }
  for (; j < half; ++j) {
    const float x1 = static_cast<float>(x[j]), x2 = static_cast<float>(x[half + j]);
    out[j] = static_cast<T>(x1 * c[j] - x2 * s[j]);
    out[half + j] = static_cast<T>(x1 * s[j] + x2 * c[j]);
  }
}

template <typename T>
void rope_rows_impl(const RopeParams& p, int64_t begin, int64_t end) {
  const int64_t dim = p.head_dim;
  const int64_t half = dim / 2;
  for (int64_t row = begin; row < end; ++row) {
    const int64_t s = row % p.seq_len;
    const float* c = p.cos + s * half;
    const float* sn = p.sin + s * half;
    const T* q = static_cast<const T*>(p.q) + row * p.heads_q * dim;
    T* qo = static_cast<T*>(p.q_out) + row * p.heads_q * dim;
    for (int64_t h = 0; h < p.heads_q; ++h) {
      rotate_head(q + h * dim, qo + h * dim, c, sn, dim, p.interleaved);
    }
    const T* k = static_cast<const T*>(p.k) + row * p.heads_k * dim;
    T* ko = static_cast<T*>(p.k_out) + row * p.heads_k * dim;
    for (int64_t h = 0; h < p.heads_k; ++h) {
      rotate_head(k + h * dim, ko + h * dim, c, sn, dim, p.interleaved);
    }
  }
}

}  // namespace rope_impl

// Tokens [begin, end) of the B * S tokens, one thread's share.
void rope_rows(const RopeParams& p, int64_t begin, int64_t end) {
  dispatch_dtype(p.dtype, [&](auto tag) { rope_impl::rope_rows_impl<decltype(tag)>(p, begin, end); });
}

}  // namespace CPU_CAPABILITY
}  // namespace sglang_diffusion::cpu
