// The attention kernel of attention.h, compiled once per CPU build (isa.h): attention.cpp
// includes it with CPU_CAPABILITY=DEFAULT, attention_avx2.cpp with CPU_CAPABILITY=AVX2.
//
// FlashAttention-2's online softmax (Dao, 2023) with CPU tiling. A work item is one
// (batch, head, block of BQ queries); for each block of BK keys:
//
//   1. S^T[n, i] = k[n] . (scale * q[i])           register-tiled: 6 keys x 16 queries
//   2. m_new[i] = max(m[i], max_n S^T[n, i]);  alpha[i] = exp(m[i] - m_new[i])
//      P^T[n, i] = exp(S^T[n, i] - m_new[i]);   l[i] = alpha[i] l[i] + sum_n P^T[n, i]
//   3. O[i, :] = alpha[i] O[i, :] + sum_n P^T[n, i] v[n, :]   register-tiled: 6 queries x 16 dims
//
// and at the end out[i] = O[i] / l[i], lse[i] = m[i] + log l[i].
//
// Why S^T and not S: with queries along the vector lanes, the softmax statistics (m, l,
// alpha) are per-lane vectors, so step 2 is pure vertical SIMD with no horizontal reductions;
// Q^T is packed once per work item (pre-scaled, zero-padded to BQ) and reused by every key
// block, while K and V rows are read in place (any strides, D contiguous), never copied.
// Both micro-kernels keep 12 accumulators in registers, with 8 loads per 12 FMAs (the BLIS
// 6x16 shape for AVX2's 16 registers).
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>

#include "attention.h"

namespace sglang_diffusion::cpu {

inline constexpr int64_t kAttnBlockQ = 96;  // queries per work item (a multiple of 48)
inline constexpr int64_t kAttnBlockK = 256;  // keys per online-softmax step

inline namespace CPU_CAPABILITY {

namespace attn {

using fVec = at::vec::Vectorized<float>;
constexpr int kLanes = fVec::size();
constexpr int kMR = 6;               // micro-tile rows
constexpr int kNR = 2 * kLanes;      // micro-tile columns
static_assert(kAttnBlockQ % (kMR * kNR / 2) == 0 && (kAttnBlockQ / 2) % kNR == 0 &&
              (kAttnBlockQ / 2) % kMR == 0);

// S^T[r, 0:kNR] = sum_d k_r[d] * qt[d, 0:kNR] for R key rows; qt has row stride ldq.
template <int R>
inline void qk_tile(const float* const* krows, const float* qt, int64_t ldq, int64_t dim, float* st,
                    int64_t lds) {
  fVec acc[R][2];
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r) {
    acc[r][0] = fVec(0.0f);
    acc[r][1] = fVec(0.0f);
  }
  for (int64_t d = 0; d < dim; ++d) {
    const fVec q0 = fVec::loadu(qt + d * ldq);
    const fVec q1 = fVec::loadu(qt + d * ldq + kLanes);
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) {
      const fVec kb(krows[r][d]);
      acc[r][0] = at::vec::fmadd(kb, q0, acc[r][0]);
      acc[r][1] = at::vec::fmadd(kb, q1, acc[r][1]);
    }
  }
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r) {
    acc[r][0].store(st + r * lds);
    acc[r][1].store(st + r * lds + kLanes);
  }
}

// O[r, 0:NV*kLanes] = alpha[r] O[r, :] + sum_n pt[n, r] v_n[:] for kMR query rows; pt has row
// stride lds, v row stride ldv, O row stride ldo. first: O starts at zero (not read).
template <int NV>
inline void pv_tile(const float* pt, int64_t lds, const float* v, int64_t ldv, int64_t nk, float* o,
                    int64_t ldo, const float* alpha, bool first) {
  fVec acc[kMR][NV];
#pragma GCC unroll 6
  for (int r = 0; r < kMR; ++r) {
    const fVec a(alpha[r]);
#pragma GCC unroll 2
    for (int c = 0; c < NV; ++c) {
      acc[r][c] = first ? fVec(0.0f) : fVec::loadu(o + r * ldo + c * kLanes) * a;
    }
  }
  for (int64_t n = 0; n < nk; ++n) {
    fVec vv[NV];
#pragma GCC unroll 2
    for (int c = 0; c < NV; ++c) {
      vv[c] = fVec::loadu(v + n * ldv + c * kLanes);
    }
#pragma GCC unroll 6
    for (int r = 0; r < kMR; ++r) {
      const fVec pb(pt[n * lds + r]);
#pragma GCC unroll 2
      for (int c = 0; c < NV; ++c) {
        acc[r][c] = at::vec::fmadd(pb, vv[c], acc[r][c]);
      }
    }
  }
#pragma GCC unroll 6
  for (int r = 0; r < kMR; ++r) {
#pragma GCC unroll 2
    for (int c = 0; c < NV; ++c) {
      acc[r][c].store(o + r * ldo + c * kLanes);
    }
  }
}

// The thread's scratch: packed Q^T, the score tile, the O accumulator and the statistics.
struct Scratch {
  explicit Scratch(int64_t bq, int64_t dim)
      : qt(new float[dim * bq]),
        st(new float[kAttnBlockK * bq]),
        o(new float[bq * dim]),
        m(new float[bq]),
        l(new float[bq]),
        mx(new float[bq]),
        alpha(new float[bq]),
        psum(new float[bq]) {}
  std::unique_ptr<float[]> qt, st, o, m, l, mx, alpha, psum;
};

// Step 1 for keys [n0, n0 + nk): st[n, i] for all bq (padded) queries.
inline void scores(const AttentionParams& p, const float* kbase, int64_t n0, int64_t nk, const float* qt,
                   int64_t bq, float* st) {
  const int64_t dim = p.head_dim;
  for (int64_t i = 0; i < bq; i += kNR) {
    int64_t n = 0;
    for (; n + kMR <= nk; n += kMR) {
      const float* krows[kMR];
      for (int r = 0; r < kMR; ++r) {
        krows[r] = kbase + (n0 + n + r) * p.k_stride_s;
      }
      qk_tile<kMR>(krows, qt + i, bq, dim, st + n * bq + i, bq);
    }
    const int64_t rest = nk - n;
    if (rest > 0) {
      const float* krows[kMR];
      for (int r = 0; r < rest; ++r) {
        krows[r] = kbase + (n0 + n + r) * p.k_stride_s;
      }
      float* dst = st + n * bq + i;
      switch (rest) {
        case 1: qk_tile<1>(krows, qt + i, bq, dim, dst, bq); break;
        case 2: qk_tile<2>(krows, qt + i, bq, dim, dst, bq); break;
        case 3: qk_tile<3>(krows, qt + i, bq, dim, dst, bq); break;
        case 4: qk_tile<4>(krows, qt + i, bq, dim, dst, bq); break;
        default: qk_tile<5>(krows, qt + i, bq, dim, dst, bq); break;
      }
    }
  }
}

// Step 2: turns st into P^T in place and updates m, l; alpha gets the rescale factors.
inline void online_softmax(float* st, int64_t nk, int64_t bq, Scratch& s, bool first) {
  float* mx = s.mx.get();
  float* psum = s.psum.get();
  for (int64_t i = 0; i < bq; i += kLanes) {
    fVec::loadu(st + i).store(mx + i);
  }
  for (int64_t n = 1; n < nk; ++n) {
    const float* row = st + n * bq;
    for (int64_t i = 0; i < bq; i += kLanes) {
      at::vec::maximum(fVec::loadu(mx + i), fVec::loadu(row + i)).store(mx + i);
    }
  }
  for (int64_t i = 0; i < bq; i += kLanes) {
    const fVec m_old = first ? fVec(-std::numeric_limits<float>::infinity()) : fVec::loadu(s.m.get() + i);
    const fVec m_new = at::vec::maximum(m_old, fVec::loadu(mx + i));
    // The first block has no history: alpha is unused (pv_tile starts from zero).
    (first ? fVec(0.0f) : (m_old - m_new).exp_u20()).store(s.alpha.get() + i);
    m_new.store(s.m.get() + i);
    fVec(0.0f).store(psum + i);
  }
  const float* m = s.m.get();
  for (int64_t n = 0; n < nk; ++n) {
    float* row = st + n * bq;
    for (int64_t i = 0; i < bq; i += kLanes) {
      const fVec e = (fVec::loadu(row + i) - fVec::loadu(m + i)).exp_u20();
      e.store(row + i);
      (fVec::loadu(psum + i) + e).store(psum + i);
    }
  }
  for (int64_t i = 0; i < bq; i += kLanes) {
    const fVec l_old = first ? fVec(0.0f) : fVec::loadu(s.l.get() + i) * fVec::loadu(s.alpha.get() + i);
    (l_old + fVec::loadu(psum + i)).store(s.l.get() + i);
  }
}

// Step 3 for keys [n0, n0 + nk).
inline void accumulate(const AttentionParams& p, const float* vbase, int64_t n0, int64_t nk, const float* pt,
                       int64_t bq, Scratch& s, bool first) {
  const int64_t dim = p.head_dim;
  const float* v0 = vbase + n0 * p.v_stride_s;
  float* o = s.o.get();
  const float* alpha = s.alpha.get();
  int64_t d = 0;
  for (; d + kNR <= dim; d += kNR) {
    for (int64_t i = 0; i < bq; i += kMR) {
      pv_tile<2>(pt + i, bq, v0 + d, p.v_stride_s, nk, o + i * dim + d, dim, alpha + i, first);
    }
  }
  for (; d + kLanes <= dim; d += kLanes) {
    for (int64_t i = 0; i < bq; i += kMR) {
      pv_tile<1>(pt + i, bq, v0 + d, p.v_stride_s, nk, o + i * dim + d, dim, alpha + i, first);
    }
  }
  for (; d < dim; ++d) {  // head dims that are not a multiple of the vector width
    for (int64_t i = 0; i < bq; ++i) {
      float acc = first ? 0.0f : o[i * dim + d] * alpha[i];
      for (int64_t n = 0; n < nk; ++n) {
        acc += pt[n * bq + i] * v0[n * p.v_stride_s + d];
      }
      o[i * dim + d] = acc;
    }
  }
}

inline void attention_item(const AttentionParams& p, int64_t bq, int64_t item, Scratch& s) {
  const int64_t q_blocks = (p.seq_q + bq - 1) / bq;
  const int64_t b = item / (p.heads * q_blocks);
  const int64_t h = (item / q_blocks) % p.heads;
  const int64_t i0 = (item % q_blocks) * bq;
  const int64_t mq = std::min(bq, p.seq_q - i0);  // real queries in this block
  const int64_t dim = p.head_dim;

  // Pack Q^T [D, bq], pre-scaled; padding queries are zero (finite scores, results dropped).
  float* qt = s.qt.get();
  const float* qbase = p.q + b * p.q_stride_b + h * p.q_stride_h + i0 * p.q_stride_s;
  for (int64_t i = 0; i < bq; ++i) {
    const float* row = qbase + i * p.q_stride_s;
    for (int64_t d = 0; d < dim; ++d) {
      qt[d * bq + i] = i < mq ? row[d] * p.scale : 0.0f;
    }
  }

  const float* kbase = p.k + b * p.k_stride_b + h * p.k_stride_h;
  const float* vbase = p.v + b * p.v_stride_b + h * p.v_stride_h;
  for (int64_t n0 = 0; n0 < p.seq_k; n0 += kAttnBlockK) {
    const int64_t nk = std::min(kAttnBlockK, p.seq_k - n0);
    const bool first = n0 == 0;
    scores(p, kbase, n0, nk, qt, bq, s.st.get());
    online_softmax(s.st.get(), nk, bq, s, first);
    accumulate(p, vbase, n0, nk, s.st.get(), bq, s, first);
  }

  float* obase = p.out + b * p.out_stride_b + h * p.out_stride_h + i0 * p.out_stride_s;
  float* lse = p.lse + (b * p.heads + h) * p.seq_q + i0;
  for (int64_t i = 0; i < mq; ++i) {
    const float l = s.l[i];
    const fVec inv(1.0f / l);
    const float* src = s.o.get() + i * dim;
    float* dst = obase + i * p.out_stride_s;
    int64_t d = 0;
    for (; d + kLanes <= dim; d += kLanes) {
      (fVec::loadu(src + d) * inv).store(dst + d);
    }
    for (; d < dim; ++d) {
      dst[d] = src[d] / l;
    }
    lse[i] = s.m[i] + std::log(l);
  }
}

}  // namespace attn

// Work items [begin, end) of batch * heads * ceil(seq_q / block_q), one thread's share.
void attention_items(const AttentionParams& p, int64_t block_q, int64_t begin, int64_t end) {
  attn::Scratch scratch(block_q, p.head_dim);
  for (int64_t item = begin; item < end; ++item) {
    attn::attention_item(p, block_q, item, scratch);
  }
}

}  // namespace CPU_CAPABILITY
}  // namespace sglang_diffusion::cpu
