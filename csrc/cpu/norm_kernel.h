// The row kernel of ../params/norm.h, compiled once per CPU build (isa.h): norm.cpp includes
// it with CPU_CAPABILITY=DEFAULT, norm_avx2.cpp and norm_avx512.cpp with their flags.
// Everything lives in the inline namespace CPU_CAPABILITY so the builds share no symbol (and,
// as vec16.h says, there is no static data).
//
// One row of D values is processed by a few passes that stay in L1 after the first:
//   [gated] r = residual + gate * x, stored (rounded) to residual_out, which is then the input
//   1. mean (LayerNorm only)      2. var = mean((v - mean)^2), or mean(v^2) for RMSNorm
//      (vec16::sum_row: four accumulators, so the adds do not serialise on one register)
//   3. out = ((v - mean) * rstd * weight + bias) * (1 + scale) + shift
// Two-pass statistics in fp32, no Welford needed: the second pass reads L1, not memory.
#pragma once

#include <cmath>
#include <cstdint>

#include "../params/norm.h"
#include "vec16.h"

namespace sglang_diffusion::cpu {
inline namespace CPU_CAPABILITY {

namespace norm_impl {

using vec16::fVec;
using vec16::kStep;
using vec16::load2;
using vec16::store2;

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
    const float mean =
        p.rms ? 0.0f : vec16::sum_row(src, dim, [](auto acc, auto v) { return acc + v; }) * inv_dim;
    const float var = vec16::sum_row(src, dim, [mean](auto acc, auto v) {
                        const auto c = v - decltype(v)(mean);
                        return vec16::madd(c, c, acc);
                      }) * inv_dim;
    const float rstd = 1.0f / std::sqrt(var + p.eps);
    modulate_row(
        src, mean, rstd, p.weight, p.bias, mod_row<mod_t>(p.scale, b, s),
        mod_row<mod_t>(p.shift, b, s), static_cast<scalar_t*>(p.out) + row * dim, dim);
  }
}

}  // namespace norm_impl

// Rows [begin, end) of the B * S rows, one thread's share.
void norm_modulate_rows(const NormModulateParams& p, int64_t begin, int64_t end) {
  dispatch_dtype(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    if (p.mod_dtype == DType::kFloat32) {
      norm_impl::norm_modulate_rows_impl<T, float>(p, begin, end);
    } else {
      norm_impl::norm_modulate_rows_impl<T, T>(p, begin, end);
    }
  });
}

}  // namespace CPU_CAPABILITY
}  // namespace sglang_diffusion::cpu
