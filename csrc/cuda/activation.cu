// Tanh-approximate GELU on CUDA (../params/activation.h): a grid-stride loop, one element per thread
// per step, fp32 math. x / (1 + exp(-2u)) stays finite at the extremes: expf overflowing to
// inf gives -0 (x -> -inf), expf -> 0 gives x (x -> +inf).
#include <algorithm>

#include "ops.h"
#include "common.cuh"

namespace sglang_diffusion::cuda {
namespace {

// -2u = x (k1 + k3 x^2)
constexpr float kK1 = -2.0f * 0.7978845608028654f;  // -2 sqrt(2/pi)
constexpr float kK3 = kK1 * 0.044715f;
constexpr int kThreads = 256;

template <typename T>
__global__ void gelu_tanh_kernel(GeluTanhParams p) {
  const T* x = static_cast<const T*>(p.x);
  T* out = static_cast<T*>(p.out);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < p.n; i += stride) {
    const float v = to_float(x[i]);
    out[i] = from_float<T>(v / (1.0f + expf(v * fmaf(kK3, v * v, kK1))));
  }
}

}  // namespace

cudaError_t gelu_tanh(const GeluTanhParams& params, cudaStream_t stream) {
  if (params.n == 0) {
    return cudaSuccess;
  }
  // Enough blocks to fill any GPU; the loop strides over the rest.
  const int64_t blocks = std::min<int64_t>((params.n + kThreads - 1) / kThreads, int64_t{1} << 16);
  return dispatch_dtype(params.dtype, [&](auto tag) {
    gelu_tanh_kernel<decltype(tag)><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(params);
    return cudaGetLastError();
  });
}

}  // namespace sglang_diffusion::cuda
