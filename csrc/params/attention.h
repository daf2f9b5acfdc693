// Attention forward with its log-sum-exp, non-causal (ops/attention.py):
//
//   out[b, i, h, :] = sum_j softmax_j(scale * q[b, i, h, :] . k[b, j, h, :]) v[b, j, h, :]
//   lse[b, h, i]    = log sum_j exp(scale * q[b, i, h, :] . k[b, j, h, :])
//
// fp32 accumulation whatever the storage dtype.
#pragma once

#include <cstdint>

#include "dtype.h"

namespace sglang_diffusion {

struct AttentionParams {
  // [B, S, H, D] with any strides over B, S, H and D contiguous, so q, k and v may be views
  // into one fused QKV projection; `dtype`.
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  void* out = nullptr;   // [B, Sq, H, D], `dtype`
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
  DType dtype = DType::kFloat32;
};

}  // namespace sglang_diffusion
