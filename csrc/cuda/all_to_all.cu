// The Ulysses layout changes on CUDA (../params/all_to_all.h): one block per row of D elements, copied
// in the widest unit that divides the row's byte length and both addresses' alignment, so a
// bf16 row of 128 moves as 16-byte vectors.
#include "ops.h"

namespace sglang_diffusion::cuda {
namespace {

template <typename U>
__global__ void permute_rows_kernel(PermuteRowsParams p, int64_t units_per_row) {
  int64_t rem = blockIdx.x;
  int64_t offset = 0;  // of the source row, in elements
  for (int i = p.ndim - 1; i >= 0; --i) {
    offset += (rem % p.sizes[i]) * p.src_strides[i];
    rem /= p.sizes[i];
  }
  const U* src = reinterpret_cast<const U*>(static_cast<const char*>(p.src) + offset * p.elem_size);
  U* out = reinterpret_cast<U*>(static_cast<char*>(p.out)) + static_cast<int64_t>(blockIdx.x) * units_per_row;
  for (int64_t i = threadIdx.x; i < units_per_row; i += blockDim.x) {
    out[i] = src[i];
  }
}

template <typename U>
cudaError_t launch(const PermuteRowsParams& p, cudaStream_t stream) {
  const int64_t row_bytes = p.row_len * p.elem_size;
  const int64_t units = row_bytes / static_cast<int64_t>(sizeof(U));
  const int threads = units >= 256 ? 256 : 64;
  permute_rows_kernel<U><<<static_cast<unsigned>(p.rows), threads, 0, stream>>>(p, units);
  return cudaGetLastError();
}

}  // namespace

cudaError_t permute_rows(const PermuteRowsParams& params, cudaStream_t stream) {
  if (params.rows == 0 || params.row_len == 0) {
    return cudaSuccess;
  }
  // The widest copy unit every source row and the output honour.
  const int64_t row_bytes = params.row_len * params.elem_size;
  uint64_t align = reinterpret_cast<uint64_t>(params.src) | reinterpret_cast<uint64_t>(params.out) |
                   static_cast<uint64_t>(row_bytes);
  for (int i = 0; i < params.ndim; ++i) {
    align |= static_cast<uint64_t>(params.src_strides[i] * params.elem_size);
  }
  if (align % 16 == 0) {
    return launch<int4>(params, stream);
  }
  if (align % 8 == 0) {
    return launch<int2>(params, stream);
  }
  if (align % 4 == 0) {
    return launch<int>(params, stream);
  }
  if (align % 2 == 0) {
    return launch<short>(params, stream);
  }
  return launch<char>(params, stream);
}

}  // namespace sglang_diffusion::cuda
