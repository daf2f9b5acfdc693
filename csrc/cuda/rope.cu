// RoPE on CUDA (../params/rope.h): one block per token; its threads walk the (head, pair) grid of q's
// and then k's heads, so the token's cos/sin row is read from L1 by every head.
#include "common.cuh"
#include "ops.h"

namespace sglang_diffusion::cuda {
namespace {

template <typename T>
__device__ __forceinline__ void rotate(const T* x, T* out, const float* c, const float* s, int heads, int dim,
                                       bool interleaved) {
  const int half = dim / 2;
  for (int i = threadIdx.x; i < heads * half; i += blockDim.x) {
    const int h = i / half;
    const int j = i % half;
    const int i1 = h * dim + (interleaved ? 2 * j : j);
    const int i2 = interleaved ? i1 + 1 : i1 + half;
    const float x1 = to_float(x[i1]);
    const float x2 = to_float(x[i2]);
    out[i1] = from_float<T>(x1 * c[j] - x2 * s[j]);
    out[i2] = from_float<T>(x1 * s[j] + x2 * c[j]);
  }
}

template <typename T>
__global__ void rope_kernel(RopeParams p) {
  const int64_t token = blockIdx.x;
  const int half = p.head_dim / 2;
  const float* c = p.cos + (token % p.seq_len) * half;
  const float* s = p.sin + (token % p.seq_len) * half;
  const int64_t q_off = token * p.heads_q * p.head_dim;
  const int64_t k_off = token * p.heads_k * p.head_dim;
  rotate(static_cast<const T*>(p.q) + q_off, static_cast<T*>(p.q_out) + q_off, c, s, p.heads_q, p.head_dim,
         p.interleaved);
  rotate(static_cast<const T*>(p.k) + k_off, static_cast<T*>(p.k_out) + k_off, c, s, p.heads_k, p.head_dim,
         p.interleaved);
}

}  // namespace

cudaError_t rope(const RopeParams& params, cudaStream_t stream) {
  const int64_t tokens = params.batch * params.seq_len;
  if (tokens == 0) {
    return cudaSuccess;
  }
  return dispatch_dtype(params.dtype, [&](auto tag) {
    rope_kernel<decltype(tag)><<<static_cast<unsigned>(tokens), 256, 0, stream>>>(params);
    return cudaGetLastError();
  });
}

}  // namespace sglang_diffusion::cuda
