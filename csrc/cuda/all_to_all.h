// The Ulysses layout changes (ops/all_to_all.py) on CUDA: out (contiguous) = a strided view of
// src with the same shape whose last dim (D) is contiguous. The params struct and the launcher.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace sglang_diffusion::cuda {

inline constexpr int kPermuteMaxDims = 6;

struct PermuteRowsParams {
  const void* src = nullptr;
  void* out = nullptr;
  int ndim = 0;  // dims before the row dim
  int64_t sizes[kPermuteMaxDims] = {};
  int64_t src_strides[kPermuteMaxDims] = {};  // in elements
  int64_t rows = 0;                           // product of sizes
  int64_t row_len = 0;                        // D
  int elem_size = 0;                          // bytes: 1, 2, 4 or 8
};

cudaError_t permute_rows(const PermuteRowsParams& params, cudaStream_t stream);

}  // namespace sglang_diffusion::cuda
