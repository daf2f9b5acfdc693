// Attention forward on CUDA (../params/attention.h): FlashAttention-2's online softmax in fp32 on CUDA
// cores. It is the fallback behind the Triton kernel (triton_kernels/attention.py, tensor
// cores) and the flash-attn package, for a _C built with CUDA and no Triton.
//
// A block of 4 warps owns 16 queries of one (batch, head); each warp owns 4 of them. Key and
// value tiles of 32 rows are staged in shared memory (fp32, rows padded by one so that the 32
// lanes reading 32 different key rows hit 32 different banks) and shared by all 16 queries:
//   scores   lane j computes query . key j over all of D (queries broadcast from shared memory)
//   softmax  max and sum are warp reductions; base 2, the scale pre-multiplied by log2(e)
//   P.V      lane l accumulates dims l, l + 32, ...; p_j is broadcast with a shuffle
#include "ops.h"
#include "common.cuh"

namespace sglang_diffusion::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kRowsPerWarp = 4;
constexpr int kRows = kWarps * kRowsPerWarp;  // queries per block
constexpr int kTile = 32;                     // keys per tile: one per lane

template <typename T, int kDimsPerLane>
__global__ void __launch_bounds__(kWarps * 32) attention_kernel(AttentionParams p) {
  extern __shared__ float smem[];
  const int dim = p.head_dim;
  const int ld = dim + 1;  // padded row stride of the key and value tiles
  float* k_tile = smem;                  // [kTile][ld]
  float* v_tile = k_tile + kTile * ld;   // [kTile][ld]
  float* q_rows = v_tile + kTile * ld;   // [kRows][dim], pre-scaled

  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  const int bh = blockIdx.y;
  const int b = bh / p.heads;
  const int h = bh % p.heads;
  const int q0 = blockIdx.x * kRows;
  const float qk_scale = p.scale * 1.4426950408889634f;  // log2(e): exp2 below

  const T* q = static_cast<const T*>(p.q) + b * p.q_stride_b + h * p.q_stride_h;
  const T* k = static_cast<const T*>(p.k) + b * p.k_stride_b + h * p.k_stride_h;
  const T* v = static_cast<const T*>(p.v) + b * p.v_stride_b + h * p.v_stride_h;
  for (int i = threadIdx.x; i < kRows * dim; i += blockDim.x) {
    const int r = i / dim;
    const int d = i % dim;
    q_rows[i] = q0 + r < p.seq_q ? to_float(q[(q0 + r) * p.q_stride_s + d]) * qk_scale : 0.0f;
  }

  float m[kRowsPerWarp], l[kRowsPerWarp], acc[kRowsPerWarp][kDimsPerLane];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    m[r] = -INFINITY;
    l[r] = 0.0f;
#pragma unroll
    for (int c = 0; c < kDimsPerLane; ++c) {
      acc[r][c] = 0.0f;
    }
  }

  for (int n0 = 0; n0 < p.seq_k; n0 += kTile) {
    __syncthreads();  // the previous tile is no longer read (and q_rows is written)
    for (int i = threadIdx.x; i < kTile * dim; i += blockDim.x) {
      const int j = i / dim;
      const int d = i % dim;
      const bool valid = n0 + j < p.seq_k;
      k_tile[j * ld + d] = valid ? to_float(k[(n0 + j) * p.k_stride_s + d]) : 0.0f;
      v_tile[j * ld + d] = valid ? to_float(v[(n0 + j) * p.v_stride_s + d]) : 0.0f;
    }
    __syncthreads();
    const bool key_valid = n0 + lane < p.seq_k;
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const float* qr = q_rows + (warp * kRowsPerWarp + r) * dim;
      float s = 0.0f;
      for (int d = 0; d < dim; ++d) {
        s = fmaf(qr[d], k_tile[lane * ld + d], s);
      }
      s = key_valid ? s : -INFINITY;
      const float m_new = fmaxf(m[r], warp_max(s));
      const float pj = exp2f(s - m_new);
      const float alpha = exp2f(m[r] - m_new);
      l[r] = l[r] * alpha + warp_sum(pj);
      m[r] = m_new;
#pragma unroll
      for (int c = 0; c < kDimsPerLane; ++c) {
        acc[r][c] *= alpha;
      }
      for (int j = 0; j < kTile; ++j) {
        const float pb = __shfl_sync(0xffffffffu, pj, j);
#pragma unroll
        for (int c = 0; c < kDimsPerLane; ++c) {
          const int d = lane + 32 * c;
          if (d < dim) {
            acc[r][c] = fmaf(pb, v_tile[j * ld + d], acc[r][c]);
          }
        }
      }
    }
  }

  T* out = static_cast<T*>(p.out) + b * p.out_stride_b + h * p.out_stride_h;
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int row = q0 + warp * kRowsPerWarp + r;
    if (row >= p.seq_q) {
      continue;
    }
    const float inv_l = 1.0f / l[r];
#pragma unroll
    for (int c = 0; c < kDimsPerLane; ++c) {
      const int d = lane + 32 * c;
      if (d < dim) {
        out[row * p.out_stride_s + d] = from_float<T>(acc[r][c] * inv_l);
      }
    }
    if (lane == 0) {
      p.lse[static_cast<int64_t>(bh) * p.seq_q + row] = (m[r] + log2f(l[r])) * 0.6931471805599453f;
    }
  }
}

template <typename T, int kDimsPerLane>
cudaError_t launch(const AttentionParams& p, cudaStream_t stream) {
  const size_t smem = sizeof(float) * (2 * kTile * (p.head_dim + 1) + kRows * p.head_dim);
  auto kernel = attention_kernel<T, kDimsPerLane>;
  if (smem > 48 * 1024) {
    const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                 static_cast<int>(smem));
    if (err != cudaSuccess) {
      return err;
    }
  }
  const dim3 grid((p.seq_q + kRows - 1) / kRows, p.batch * p.heads);
  kernel<<<grid, kWarps * 32, smem, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

cudaError_t attention(const AttentionParams& params, cudaStream_t stream) {
  if (params.head_dim < 1 || params.head_dim > kAttentionMaxHeadDim || params.seq_k < 1) {
    return cudaErrorInvalidValue;
  }
  return dispatch_dtype(params.dtype, [&](auto tag) {
    using T = decltype(tag);
    if (params.head_dim <= 64) {
      return launch<T, 2>(params, stream);
    }
    if (params.head_dim <= 128) {
      return launch<T, 4>(params, stream);
    }
    return launch<T, 8>(params, stream);
  });
}

}  // namespace sglang_diffusion::cuda
