// Norm + adaLN modulation on CUDA (../params/norm.h): one block per row, fp32 statistics by block
// reductions (two passes: mean, then the centred sum of squares), the row re-read from L1/L2.
#include "common.cuh"
#include "ops.h"

namespace sglang_diffusion::cuda {
namespace {

template <typename M>
__device__ __forceinline__ const M* mod_row(const ModParam& m, int64_t b, int64_t s) {
  return static_cast<const M*>(m.ptr) + b * m.stride_b + s * m.stride_s;
}

template <typename T, typename M>
__global__ void norm_modulate_kernel(NormModulateParams p) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const int64_t b = row / p.seq_len;
  const int64_t s = row % p.seq_len;
  const int dim = p.dim;
  const T* src = static_cast<const T*>(p.x) + row * dim;
  if (p.residual != nullptr) {
    const T* res = static_cast<const T*>(p.residual) + row * dim;
    T* r_out = static_cast<T*>(p.residual_out) + row * dim;
    const M* gate = p.gate.ptr != nullptr ? mod_row<M>(p.gate, b, s) : nullptr;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
      const float g = gate != nullptr ? to_float(gate[i]) : 1.0f;
      r_out[i] = from_float<T>(fmaf(g, to_float(src[i]), to_float(res[i])));
    }
    __syncthreads();  // each thread re-reads the whole row below
    src = r_out;
  }
  float mean = 0.0f;
  if (!p.rms) {
    float sum = 0.0f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
      sum += to_float(src[i]);
    }
    mean = block_sum(sum, scratch) / dim;
  }
  float ss = 0.0f;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) {
    const float c = to_float(src[i]) - mean;
    ss = fmaf(c, c, ss);
  }
  const float rstd = rsqrtf(block_sum(ss, scratch) / dim + p.eps);
  const M* scale = mod_row<M>(p.scale, b, s);
  const M* shift = mod_row<M>(p.shift, b, s);
  T* out = static_cast<T*>(p.out) + row * dim;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) {
    float y = (to_float(src[i]) - mean) * rstd;
    if (p.weight != nullptr) {
      y *= p.weight[i];
    }
    if (p.bias != nullptr) {
      y += p.bias[i];
    }
    out[i] = from_float<T>(fmaf(y, 1.0f + to_float(scale[i]), to_float(shift[i])));
  }
}

}  // namespace

cudaError_t norm_modulate(const NormModulateParams& params, cudaStream_t stream) {
  const int64_t rows = params.batch * params.seq_len;
  if (rows == 0 || params.dim == 0) {
    return cudaSuccess;
  }
  const int threads = params.dim >= 2048 ? 512 : params.dim >= 512 ? 256 : 64;
  const bool fp32_mod = params.mod_dtype == DType::kFloat32;
  return dispatch_dtype(params.dtype, [&](auto tag) {
    using T = decltype(tag);
    if (fp32_mod) {
      norm_modulate_kernel<T, float><<<static_cast<unsigned>(rows), threads, 0, stream>>>(params);
    } else {
      norm_modulate_kernel<T, T><<<static_cast<unsigned>(rows), threads, 0, stream>>>(params);
    }
    return cudaGetLastError();
  });
}

}  // namespace sglang_diffusion::cuda
