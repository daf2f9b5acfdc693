// The row kernel of norm.h, compiled once per CPU build (isa.h): norm.cpp includes it with
// CPU_CAPABILITY=DEFAULT, norm_avx2.cpp with CPU_CAPABILITY=AVX2 and the AVX2 flags.
// Everything lives in the inline namespace CPU_CAPABILITY so the builds share no symbol, and
// there is no static data: its initializer would run this build's instructions on any CPU
// (ATen's Note [Do not compile initializers with AVX]).
//
// One row of D values is processed by a few passes that stay in L1 after the first:
//   [gated] r = residual + gate * x, stored (rounded) to residual_out, which is then the input
//   1. mean (LayerNorm only)      2. var = mean((v - mean)^2), or mean(v^2) for RMSNorm
//   3. out = ((v - mean) * rstd * weight + bias) * (1 + scale) + shift
// Two-pass statistics in fp32, no Welford needed: the second pass reads L1, not memory.
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstdint>
#include <tuple>
#include <type_traits>

#include "norm.h"

namespace sglang_diffusion::cpu {
inline namespace CPU_CAPABILITY {

using fVec = at::vec::Vectorized<float>;

// Every row loop steps by two fp32 vectors, which is one vector of a 16-bit type.
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

template <typename T>
inline const T* mod_row(const ModParam& m, int64_t b, int64_t s) {
  return static_cast<const T*>(m.ptr) + b * m.stride_b + s * m.stride_s;
}

// r = residual + gate * x (gate null: 1), written to r_out in the storage dtype.
template <typename scalar_t, typename mod_t>
inline void gated_add_row(
    const scalar_t* residual, const scalar_t* x, const mod_t* gate, scalar_t* r_out,
    int64_t dim) {
  const int64_t dim_vec = dim - dim % kStep;
  int64_t d = 0;
  for (; d < dim_vec; d += kStep) {
    fVec r0, r1, x0, x1;
    load2(residual + d, r0, r1);
    load2(x + d, x0, x1);
    if (gate != nullptr) {
      fVec g0, g1;
      load2(gate + d, g0, g1);
      r0 = at::vec::fmadd(g0, x0, r0);
      r1 = at::vec::fmadd(g1, x1, r1);
    } else {
      r0 = r0 + x0;
      r1 = r1 + x1;
    }
    store2(r_out + d, r0, r1);
  }
  for (; d < dim; ++d) {
    const float g = gate != nullptr ? static_cast<float>(gate[d]) : 1.0f;
    r_out[d] = static_cast<scalar_t>(
        static_cast<float>(residual[d]) + g * static_cast<float>(x[d]));
  }
}

// The statistics passes keep four independent accumulators (two steps per iteration), so
// the adds are not serialised on one register's latency.
template <typename scalar_t>
inline float row_sum(const scalar_t* v, int64_t dim) {
  const int64_t dim_vec2 = dim - dim % (2 * kStep);
  const int64_t dim_vec = dim - dim % kStep;
  fVec acc0(0.0f), acc1(0.0f), acc2(0.0f), acc3(0.0f);
  int64_t d = 0;
  for (; d < dim_vec2; d += 2 * kStep) {
    fVec v0, v1, v2, v3;
    load2(v + d, v0, v1);
    load2(v + d + kStep, v2, v3);
    acc0 = acc0 + v0;
    acc1 = acc1 + v1;
    acc2 = acc2 + v2;
    acc3 = acc3 + v3;
  }
  for (; d < dim_vec; d += kStep) {
    fVec v0, v1;
    load2(v + d, v0, v1);
    acc0 = acc0 + v0;
    acc1 = acc1 + v1;
  }
  float sum = sum_lanes((acc0 + acc1) + (acc2 + acc3));
  for (; d < dim; ++d) {
    sum += static_cast<float>(v[d]);
  }
  return sum;
}

// sum((v - mean)^2)
template <typename scalar_t>
inline float row_sum_sq_dev(const scalar_t* v, float mean, int64_t dim) {
  const int64_t dim_vec2 = dim - dim % (2 * kStep);
  const int64_t dim_vec = dim - dim % kStep;
  const fVec vmean(mean);
  fVec acc0(0.0f), acc1(0.0f), acc2(0.0f), acc3(0.0f);
  int64_t d = 0;
  for (; d < dim_vec2; d += 2 * kStep) {
    fVec v0, v1, v2, v3;
    load2(v + d, v0, v1);
    load2(v + d + kStep, v2, v3);
    v0 = v0 - vmean;
    v1 = v1 - vmean;
    v2 = v2 - vmean;
    v3 = v3 - vmean;
    acc0 = at::vec::fmadd(v0, v0, acc0);
    acc1 = at::vec::fmadd(v1, v1, acc1);
    acc2 = at::vec::fmadd(v2, v2, acc2);
    acc3 = at::vec::fmadd(v3, v3, acc3);
  }
  for (; d < dim_vec; d += kStep) {
    fVec v0, v1;
    load2(v + d, v0, v1);
    v0 = v0 - vmean;
    v1 = v1 - vmean;
    acc0 = at::vec::fmadd(v0, v0, acc0);
    acc1 = at::vec::fmadd(v1, v1, acc1);
  }
  float sum = sum_lanes((acc0 + acc1) + (acc2 + acc3));
  for (; d < dim; ++d) {
    const float c = static_cast<float>(v[d]) - mean;
    sum += c * c;
  }
  return sum;
}

template <typename scalar_t, typename mod_t>
inline void modulate_row(
    const scalar_t* v, float mean, float rstd, const float* weight, const float* bias,
    const mod_t* scale, const mod_t* shift, scalar_t* out, int64_t dim) {
  const int64_t dim_vec = dim - dim % kStep;
  const int64_t half = fVec::size();
  const fVec vmean(mean), vrstd(rstd), one(1.0f);
  int64_t d = 0;
  for (; d < dim_vec; d += kStep) {
    fVec n0, n1, sc0, sc1, sh0, sh1;
    load2(v + d, n0, n1);
    n0 = (n0 - vmean) * vrstd;
    n1 = (n1 - vmean) * vrstd;
    if (weight != nullptr) {
      n0 = n0 * fVec::loadu(weight + d);
      n1 = n1 * fVec::loadu(weight + d + half);
    }
    if (bias != nullptr) {
      n0 = n0 + fVec::loadu(bias + d);
      n1 = n1 + fVec::loadu(bias + d + half);
    }
    load2(scale + d, sc0, sc1);
    load2(shift + d, sh0, sh1);
    store2(out + d, at::vec::fmadd(n0, one + sc0, sh0), at::vec::fmadd(n1, one + sc1, sh1));
  }
  for (; d < dim; ++d) {
    float n = (static_cast<float>(v[d]) - mean) * rstd;
    if (weight != nullptr) {
      n *= weight[d];
    }
    if (bias != nullptr) {
      n += bias[d];
    }
    out[d] = static_cast<scalar_t>(
        n * (1.0f + static_cast<float>(scale[d])) + static_cast<float>(shift[d]));
  }
}

template <typename scalar_t, typename mod_t>
void norm_modulate_rows_impl(const NormModulateParams& p, int64_t begin, int64_t end) {
  const int64_t dim = p.dim;
  const float inv_dim = 1.0f / static_cast<float>(dim);
  for (int64_t row = begin; row < end; ++row) {
    const int64_t b = row / p.seq_len;
    const int64_t s = row - b * p.seq_len;
    const scalar_t* src = static_cast<const scalar_t*>(p.x) + row * dim;
    if (p.residual != nullptr) {
      scalar_t* r_out = static_cast<scalar_t*>(p.residual_out) + row * dim;
      const mod_t* gate = p.gate.ptr != nullptr ? mod_row<mod_t>(p.gate, b, s) : nullptr;
      gated_add_row(static_cast<const scalar_t*>(p.residual) + row * dim, src, gate, r_out, dim);
      // Normalise what was stored, as the unfused `residual = (residual + gate * x).to(dtype)`.
      src = r_out;
    }
    const float mean = p.rms ? 0.0f : row_sum(src, dim) * inv_dim;
    const float var = row_sum_sq_dev(src, mean, dim) * inv_dim;
    const float rstd = 1.0f / std::sqrt(var + p.eps);
    modulate_row(
        src, mean, rstd, p.weight, p.bias, mod_row<mod_t>(p.scale, b, s),
        mod_row<mod_t>(p.shift, b, s), static_cast<scalar_t*>(p.out) + row * dim, dim);
  }
}

// Rows [begin, end) of the B * S rows, one thread's share.
void norm_modulate_rows(const NormModulateParams& p, int64_t begin, int64_t end) {
  const bool fp32_mod = p.mod_dtype == DType::kFloat32;
  switch (p.dtype) {
    case DType::kFloat32:
      return norm_modulate_rows_impl<float, float>(p, begin, end);
    case DType::kBFloat16:
      return fp32_mod ? norm_modulate_rows_impl<c10::BFloat16, float>(p, begin, end)
                      : norm_modulate_rows_impl<c10::BFloat16, c10::BFloat16>(p, begin, end);
    case DType::kFloat16:
      return fp32_mod ? norm_modulate_rows_impl<c10::Half, float>(p, begin, end)
                      : norm_modulate_rows_impl<c10::Half, c10::Half>(p, begin, end);
  }
}

}  // namespace CPU_CAPABILITY
}  // namespace sglang_diffusion::cpu
