// Attention forward with its log-sum-exp on the CPU: the params struct and the entry point.
//
//   out[b, i, h, :] = sum_j softmax_j(scale * q[b, i, h, :] . k[b, j, h, :]) v[b, j, h, :]
//   lse[b, h, i]    = log sum_j exp(scale * q[b, i, h, :] . k[b, j, h, :])
//
// Non-causal, fp32 throughout (csrc/bindings.cpp converts 16-bit inputs). No torch headers:
// bindings.cpp checks every tensor and fills the struct.
#pragma once

#include <cstdint>

#include "isa.h"

namespace sglang_diffusion::cpu {

struct AttentionParams {
  // [B, S, H, D] with any strides over B, S, H (in elements) and D contiguous, so q, k and v
  // may be views into one fused QKV projection.
  const float* q = nullptr;
  const float* k = nullptr;
  const float* v = nullptr;
  float* out = nullptr;  // [B, Sq, H, D]
  float* lse = nullptr;  // [B, H, Sq] contiguous
  int64_t q_stride_b = 0, q_stride_s = 0, q_stride_h = 0;
  int64_t k_stride_b = 0, k_stride_s = 0, k_stride_h = 0;
  int64_t v_stride_b = 0, v_stride_s = 0, v_stride_h = 0;
  int64_t out_stride_b = 0, out_stride_s = 0, out_stride_h = 0;
  int64_t batch = 0;
  int64_t seq_q = 0;
  int64_t seq_k = 0;  // >= 1
  int64_t heads = 0;
  int64_t head_dim = 0;
  float scale = 1.0f;
};

// Splits (batch, head, query block) work items over torch's OpenMP threads; runs the `isa`
// build (isa.h).
void attention(const AttentionParams& params, Isa isa);

}  // namespace sglang_diffusion::cpu
