// RoPE of q and k on CUDA: the params struct and the launcher (ops/rope.py gives the math).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "dtype.h"

namespace sglang_diffusion::cuda {

struct RopeParams {
  const void* q = nullptr;  // [B, S, Hq, D] contiguous
  const void* k = nullptr;  // [B, S, Hk, D] contiguous
  void* q_out = nullptr;
  void* k_out = nullptr;
  const float* cos = nullptr;  // [S, D/2] contiguous
  const float* sin = nullptr;
  int64_t tokens = 0;  // B * S
  int seq_len = 0;
  int heads_q = 0;
  int heads_k = 0;
  int head_dim = 0;  // even
  bool interleaved = true;
  DType dtype = DType::kFloat32;
};

cudaError_t rope(const RopeParams& params, cudaStream_t stream);

}  // namespace sglang_diffusion::cuda
