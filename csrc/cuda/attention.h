// Attention forward with its log-sum-exp on CUDA (non-causal): the params struct and the
// launcher, as ops/attention.py specifies it. No torch headers; csrc/bindings.cpp checks the
// tensors and fills the struct.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "dtype.h"

namespace sglang_diffusion::cuda {

struct AttentionParams {
  // [B, S, H, D] with any strides over B, S, H (in elements) and D contiguous; `dtype`.
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  void* out = nullptr;
  float* lse = nullptr;  // [B, H, Sq] contiguous
  int64_t q_stride_b = 0, q_stride_s = 0, q_stride_h = 0;
  int64_t k_stride_b = 0, k_stride_s = 0, k_stride_h = 0;
  int64_t v_stride_b = 0, v_stride_s = 0, v_stride_h = 0;
  int64_t out_stride_b = 0, out_stride_s = 0, out_stride_h = 0;
  int batch = 0;
  int seq_q = 0;
  int seq_k = 0;  // >= 1
  int heads = 0;
  int head_dim = 0;  // 1 ... 256
  float scale = 1.0f;
  DType dtype{};
};

inline constexpr int kAttentionMaxHeadDim = 256;

cudaError_t attention(const AttentionParams& params, cudaStream_t stream);

}  // namespace sglang_diffusion::cuda
