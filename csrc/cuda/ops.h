// The CUDA kernels' launchers, one per op of csrc/params/ (which says each op's math). Plain
// CUDA runtime, no torch headers: CI compiles every .cu file with nvcc alone
// (scripts/test.sh), and csrc/bindings.cpp checks the tensors and fills the structs.
#pragma once

#include <cuda_runtime.h>

#include "../params/activation.h"
#include "../params/all_to_all.h"
#include "../params/attention.h"
#include "../params/norm.h"
#include "../params/qk_norm.h"
#include "../params/rope.h"

namespace sglang_diffusion::cuda {

inline constexpr int kAttentionMaxHeadDim = 256;

cudaError_t norm_modulate(const NormModulateParams& params, cudaStream_t stream);
cudaError_t rms_rows(const RmsRowsParams& params, cudaStream_t stream);
cudaError_t rope(const RopeParams& params, cudaStream_t stream);
cudaError_t attention(const AttentionParams& params, cudaStream_t stream);  // head_dim <= 256
cudaError_t gelu_tanh(const GeluTanhParams& params, cudaStream_t stream);
cudaError_t permute_rows(const PermuteRowsParams& params, cudaStream_t stream);

}  // namespace sglang_diffusion::cuda
