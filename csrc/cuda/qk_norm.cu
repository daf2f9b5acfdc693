// RMS rows on CUDA (../params/qk_norm.h): one block per row; the sum of squares is a block reduction
// in fp32, then each thread scales the values it read (re-read from L1/L2).
#include "common.cuh"
#include "ops.h"

namespace sglang_diffusion::cuda {
namespace {

template <typename T>
__global__ void rms_rows_kernel(RmsRowsParams p) {
  __shared__ float scratch[32];
  const T* x = static_cast<const T*>(p.x) + blockIdx.x * static_cast<int64_t>(p.width);
  T* out = static_cast<T*>(p.out) + blockIdx.x * static_cast<int64_t>(p.width);
  float ss = 0.0f;
  for (int i = threadIdx.x; i < p.width; i += blockDim.x) {
    const float v = to_float(x[i]);
    ss = fmaf(v, v, ss);
  }
  const float rstd = rsqrtf(block_sum(ss, scratch) / p.width + p.eps);
  for (int i = threadIdx.x; i < p.width; i += blockDim.x) {
    const float w = p.weight != nullptr ? p.weight[i] : 1.0f;
    out[i] = from_float<T>(to_float(x[i]) * rstd * w);
  }
}

}  // namespace

cudaError_t rms_rows(const RmsRowsParams& params, cudaStream_t stream) {
  if (params.rows == 0) {
    return cudaSuccess;
  }
  const int threads = params.width >= 1024 ? 256 : params.width >= 256 ? 128 : 32;
  return dispatch_dtype(params.dtype, [&](auto tag) {
    rms_rows_kernel<decltype(tag)><<<static_cast<unsigned>(params.rows), threads, 0, stream>>>(params);
    return cudaGetLastError();
  });
}

}  // namespace sglang_diffusion::cuda
