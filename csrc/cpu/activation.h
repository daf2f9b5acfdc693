// Tanh-approximate GELU on the CPU, the kernel behind ops/activation.py: the params struct and
// the entry point.
//
//   out = 0.5 x (1 + tanh(u)) = x / (1 + exp(-2u)),   u = sqrt(2/pi) (x + 0.044715 x^3)
//
// Elementwise over a flat contiguous buffer; out may be x itself. fp32 math; no torch headers
// (bindings.cpp checks and fills the struct).
#pragma once

#include <cstdint>

#include "dtype.h"
#include "isa.h"

namespace sglang_diffusion::cpu {

struct GeluTanhParams {
  const void* x = nullptr;  // [n] contiguous, `dtype`
  void* out = nullptr;      // like x; may be x
  int64_t n = 0;
  ActDType dtype = ActDType::kFloat32;
};

// OpenMP-parallel over chunks of the buffer; runs the `isa` build (isa.h).
void gelu_tanh(const GeluTanhParams& params, Isa isa);

}  // namespace sglang_diffusion::cpu
