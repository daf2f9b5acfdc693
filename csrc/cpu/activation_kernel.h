// The tanh-GELU kernel of ../params/activation.h, compiled once per CPU build (isa.h):
// activation.cpp includes it with CPU_CAPABILITY=DEFAULT, activation_avx2.cpp and
// activation_avx512.cpp with their flags.
//
// gelu_tanh(x) = x * sigmoid(2u) = x / (1 + exp(-2u)): one exp and one division instead of a
// tanh, which ATen evaluates with a much slower polynomial (F.gelu: ~5x this kernel's time).
// The extremes need no special case: exp(-2u) -> 0 gives x (x -> +inf); for x below ~-10,
// exp(-2u) is +inf (std::exp overflows; exp_u20 clamps its argument to ln(FLT_MAX), where it
// returns 2^128 = inf), giving -0, never NaN. exp_u20 (20 ulp) puts the kernel within ~5e-7
// of the exact value on [-30, 30], about as close as F.gelu's own fp32 result.
#pragma once

#include <cmath>
#include <cstdint>

#include "../params/activation.h"
#include "vec16.h"

namespace sglang_diffusion::cpu {
inline namespace CPU_CAPABILITY {

namespace activation_impl {

using vec16::fVec;
using vec16::kStep;

// -2u = x (k1 + k3 x^2)
constexpr float kK1 = -2.0f * 0.7978845608028654f;  // -2 sqrt(2/pi)
constexpr float kK3 = kK1 * 0.044715f;

inline float gelu_tanh_scalar(float x) {
  return x / (1.0f + std::exp(x * (kK1 + kK3 * x * x)));
}

inline fVec gelu_tanh_vec(const fVec& x) {
  const fVec e = (x * at::vec::fmadd(x * x, fVec(kK3), fVec(kK1))).exp_u20();
  return x / (e + fVec(1.0f));
}

template <typename T>
void gelu_tanh_impl(const GeluTanhParams& p, int64_t begin, int64_t end) {
  const T* x = static_cast<const T*>(p.x);
  T* out = static_cast<T*>(p.out);
  int64_t i = begin;
  for (; i + kStep <= end; i += kStep) {
    fVec a, b;
    vec16::load2(x + i, a, b);
    vec16::store2(out + i, gelu_tanh_vec(a), gelu_tanh_vec(b));
  }
  for (; i < end; ++i) {
    out[i] = static_cast<T>(gelu_tanh_scalar(static_cast<float>(x[i])));
  }
}

}  // namespace activation_impl

// Elements [begin, end), one thread's share.
void gelu_tanh(const GeluTanhParams& p, int64_t begin, int64_t end) {
  dispatch_dtype(p.dtype, [&](auto tag) { activation_impl::gelu_tanh_impl<decltype(tag)>(p, begin, end); });
}

}  // namespace CPU_CAPABILITY
}  // namespace sglang_diffusion::cpu
