// The attention kernel of attention.h, compiled once per CPU build (isa.h): attention.cpp
// includes it with CPU_CAPABILITY=DEFAULT, attention_avx2.cpp with CPU_CAPABILITY=AVX2.
//
// FlashAttention-2's online softmax (Dao, 2023) with CPU tiling. A work item is one
// (batch, head, block of BQ queries); for each block of BK keys:
//
//   1. S^T[n, i] = k[n] . (scale * q[i]), and its max over n  micro-tiles of 6 keys x 16 queries
//   2. m_new[i] = max(m[i], max_n S^T[n, i]);  alpha[i] = exp(m[i] - m_new[i])
//      P^T[n, i] = exp(S^T[n, i] - m_new[i]);   l[i] = alpha[i] l[i] + sum_n P^T[n, i]
//   3. O^T[d, i] = alpha[i] O^T[d, i] + sum_n v[n, d] P^T[n, i]   micro-tiles of 6 dims x 16 queries
//
// and at the end out[i] = O^T[:, i] / l[i], lse[i] = m[i] + log l[i].
//
// Why transposed (queries along the vector lanes): the softmax statistics (m, l, alpha) are
// then per-lane vectors, so step 2 is vertical SIMD with no horizontal reductions, and the
// rescale by alpha in step 3 is one vector multiply per accumulator. Both products are the
// same 6x16 micro-kernel (the BLIS shape for AVX2's 16 registers: 12 accumulators, 8 loads per
// 12 FMAs), broadcasting from K or V rows (copied into contiguous rows once per batch and head
// per thread, see attention_items) and loading vectors of queries from Q^T, packed once per
// work item (pre-scaled, zero-padded to BQ), or from P^T.
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

inline constexpr int64_t kAttnBlockQ = 128;  // queries per work item (2 x a multiple of 16)
inline constexpr int64_t kAttnBlockK = 128;  // keys per online-softmax step

inline namespace CPU_CAPABILITY {

namespace attn {

using fVec = at::vec::Vectorized<float>;
constexpr int kLanes = fVec::size();
constexpr int kMR = 6;               // micro-tile rows
constexpr int kNR = 2 * kLanes;      // micro-tile columns
static_assert(kAttnBlockQ % kNR == 0 && (kAttnBlockQ / 2) % kNR == 0);

// acc[r, 0:kNR] (+)= sum_k A(k, r) * b[k * ldb + 0:kNR] for k < kdim and R rows: the one
// micro-kernel of both products. A is read by broadcasts, b by two vector loads; the 12
// accumulators stay in registers.
//   kARows:  A(k, r) = a[r * lda + k]  scores: S^T[n, i] = sum_d K[n, d] Qt[d, i]  (a: K rows)
//   else:    A(k, r) = a[k * lda + r]  values: O^T[d, i] += sum_n V[n, d] P^T[n, i] (a: V rows)
// scale: when not null, acc starts as out[r] * scale (the online softmax's rescale), else 0.
// colmax: when not null, colmax[0:kNR] = max(colmax, max over the R rows) (the scores' running
// maximum per query, so the softmax needs no pass of its own for it).
template <int R, bool kARows>
inline void micro_tile(const float* a, int64_t lda, const float* b, int64_t ldb, int64_t kdim,
                       float* out, int64_t ldo, const float* scale, float* colmax) {
  fVec acc[R][2];
  if (scale != nullptr) {
    const fVec s0 = fVec::loadu(scale), s1 = fVec::loadu(scale + kLanes);
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) {
      acc[r][0] = fVec::loadu(out + r * ldo) * s0;
      acc[r][1] = fVec::loadu(out + r * ldo + kLanes) * s1;
    }
  } else {
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) {
      acc[r][0] = fVec(0.0f);
      acc[r][1] = fVec(0.0f);
    }
  }
  for (int64_t k = 0; k < kdim; ++k) {
    const fVec b0 = fVec::loadu(b + k * ldb);
    const fVec b1 = fVec::loadu(b + k * ldb + kLanes);
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) {
      const fVec ab(kARows ? a[r * lda + k] : a[k * lda + r]);
      acc[r][0] = at::vec::fmadd(ab, b0, acc[r][0]);
      acc[r][1] = at::vec::fmadd(ab, b1, acc[r][1]);
    }
  }
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r) {
    acc[r][0].store(out + r * ldo);
    acc[r][1].store(out + r * ldo + kLanes);
  }
  if (colmax != nullptr) {
    fVec m0 = fVec::loadu(colmax), m1 = fVec::loadu(colmax + kLanes);
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) {
      m0 = at::vec::maximum(m0, acc[r][0]);
      m1 = at::vec::maximum(m1, acc[r][1]);
    }
    m0.store(colmax);
    m1.store(colmax + kLanes);
  }
}

// micro_tile with R = rows (1 ... kMR) chosen at run time, for the edges.
template <bool kARows>
inline void micro_tile_rows(int64_t rows, const float* a, int64_t lda, const float* b, int64_t ldb,
                            int64_t kdim, float* out, int64_t ldo, const float* scale, float* colmax) {
  switch (rows) {
    case 6: return micro_tile<6, kARows>(a, lda, b, ldb, kdim, out, ldo, scale, colmax);
    case 5: return micro_tile<5, kARows>(a, lda, b, ldb, kdim, out, ldo, scale, colmax);
    case 4: return micro_tile<4, kARows>(a, lda, b, ldb, kdim, out, ldo, scale, colmax);
    case 3: return micro_tile<3, kARows>(a, lda, b, ldb, kdim, out, ldo, scale, colmax);
    case 2: return micro_tile<2, kARows>(a, lda, b, ldb, kdim, out, ldo, scale, colmax);
    default: return micro_tile<1, kARows>(a, lda, b, ldb, kdim, out, ldo, scale, colmax);
  }
}

// The thread's scratch: packed Q^T, the score tile, the O^T accumulator and the softmax
// statistics.
struct Scratch {
  explicit Scratch(int64_t bq, int64_t dim)
      : qt(new float[dim * bq]),
        st(new float[kAttnBlockK * bq]),
        ot(new float[dim * bq]),
        m(new float[bq]),
        l(new float[bq]),
        mx(new float[bq]),
        alpha(new float[bq]) {}
  std::unique_ptr<float[]> qt, st, ot, m, l, mx, alpha;
};

// Step 1 for keys k[0, nk) (rows ldk apart): st[n, i] for all bq (padded) queries, and mx[i],
// their maximum over the block.
inline void scores(const float* k, int64_t ldk, int64_t dim, int64_t nk, int64_t bq, Scratch& s) {
  std::fill_n(s.mx.get(), bq, -std::numeric_limits<float>::infinity());
  for (int64_t n = 0; n < nk; n += kMR) {
    for (int64_t i = 0; i < bq; i += kNR) {
      micro_tile_rows<true>(std::min<int64_t>(kMR, nk - n), k + n * ldk, ldk, s.qt.get() + i, bq,
                            dim, s.st.get() + n * bq + i, bq, nullptr, s.mx.get() + i);
    }
  }
}

// Step 2: turns st into P^T in place and updates m, l (mx holds the block's maxima); alpha
// gets the rescale factors. kNR queries at a time, so their maxima and sums stay in registers.
inline void online_softmax(float* st, int64_t nk, int64_t bq, Scratch& s, bool first) {
  for (int64_t i = 0; i < bq; i += kNR) {
    fVec m_new[2], l_new[2];
    for (int c = 0; c < 2; ++c) {
      const int64_t j = i + c * kLanes;
      const fVec m_old = first ? fVec(-std::numeric_limits<float>::infinity()) : fVec::loadu(s.m.get() + j);
      m_new[c] = at::vec::maximum(m_old, fVec::loadu(s.mx.get() + j));
      // The first block has no history: alpha is unused (the accumulator starts from zero).
      const fVec alpha = first ? fVec(0.0f) : (m_old - m_new[c]).exp_u20();
      alpha.store(s.alpha.get() + j);
      m_new[c].store(s.m.get() + j);
      l_new[c] = first ? fVec(0.0f) : fVec::loadu(s.l.get() + j) * alpha;
    }
    for (int64_t n = 0; n < nk; ++n) {
      float* row = st + n * bq + i;
      const fVec e0 = (fVec::loadu(row) - m_new[0]).exp_u20();
      const fVec e1 = (fVec::loadu(row + kLanes) - m_new[1]).exp_u20();
      e0.store(row);
      e1.store(row + kLanes);
      l_new[0] = l_new[0] + e0;
      l_new[1] = l_new[1] + e1;
    }
    l_new[0].store(s.l.get() + i);
    l_new[1].store(s.l.get() + i + kLanes);
  }
}

// Step 3 for values v[0, nk) (rows ldv apart): O^T[d, i] = alpha[i] O^T[d, i] + sum_n v[n, d] P^T[n, i].
inline void accumulate(const float* v, int64_t ldv, int64_t dim, int64_t nk, int64_t bq, Scratch& s, bool first) {
  for (int64_t d = 0; d < dim; d += kMR) {
    for (int64_t i = 0; i < bq; i += kNR) {
      const float* alpha = first ? nullptr : s.alpha.get() + i;
      micro_tile_rows<false>(std::min<int64_t>(kMR, dim - d), v + d, ldv, s.st.get() + i, bq, nk,
                             s.ot.get() + d * bq + i, bq, alpha, nullptr);
    }
  }
}

inline void attention_item(const AttentionParams& p, int64_t bq, int64_t item, Scratch& s,
                           const float* kbase, int64_t ldk, const float* vbase, int64_t ldv) {
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

  for (int64_t n0 = 0; n0 < p.seq_k; n0 += kAttnBlockK) {
    const int64_t nk = std::min(kAttnBlockK, p.seq_k - n0);
    const bool first = n0 == 0;
    scores(kbase + n0 * ldk, ldk, dim, nk, bq, s);
    online_softmax(s.st.get(), nk, bq, s, first);
    accumulate(vbase + n0 * ldv, ldv, dim, nk, bq, s, first);
  }

  // out[i, d] = O^T[d, i] / l[i]: one transposing pass per work item.
  float* obase = p.out + b * p.out_stride_b + h * p.out_stride_h + i0 * p.out_stride_s;
  float* lse = p.lse + (b * p.heads + h) * p.seq_q + i0;
  const float* ot = s.ot.get();
  for (int64_t i = 0; i < mq; ++i) {
    const float inv_l = 1.0f / s.l[i];
    float* dst = obase + i * p.out_stride_s;
    for (int64_t d = 0; d < dim; ++d) {
      dst[d] = ot[d * bq + i] * inv_l;
    }
    lse[i] = s.m[i] + std::log(s.l[i]);
  }
}

}  // namespace attn

// Work items [begin, end) of batch * heads * ceil(seq_q / block_q), one thread's share.
void attention_items(const AttentionParams& p, int64_t block_q, int64_t begin, int64_t end) {
  attn::Scratch scratch(block_q, p.head_dim);
  const int64_t q_blocks = (p.seq_q + block_q - 1) / block_q;
  const int64_t dim = p.head_dim;
  // A thread's items are consecutive, so it meets each (batch, head) once, for many query
  // blocks: its keys and values are copied once into contiguous rows, which the micro-kernels
  // then stream (rows H*D apart in [B, S, H, D] touch a new page every few rows; measured:
  // +8% at S=4096, H=12, D=128). Rows that are already contiguous are read in place.
  const bool in_place = p.k_stride_s == dim && p.v_stride_s == dim;
  std::unique_ptr<float[]> kv(in_place ? nullptr : new float[2 * p.seq_k * dim]);
  int64_t packed = -1;
  const float* kc = nullptr;
  const float* vc = nullptr;
  for (int64_t item = begin; item < end; ++item) {
    const int64_t bh = item / q_blocks;
    if (bh != packed) {
      const int64_t b = bh / p.heads, h = bh % p.heads;
      const float* k = p.k + b * p.k_stride_b + h * p.k_stride_h;
      const float* v = p.v + b * p.v_stride_b + h * p.v_stride_h;
      if (in_place) {
        kc = k;
        vc = v;
      } else {
        float* kdst = kv.get();
        float* vdst = kdst + p.seq_k * dim;
        for (int64_t n = 0; n < p.seq_k; ++n) {
          std::copy_n(k + n * p.k_stride_s, dim, kdst + n * dim);
          std::copy_n(v + n * p.v_stride_s, dim, vdst + n * dim);
        }
        kc = kdst;
        vc = vdst;
      }
      packed = bh;
    }
    attn::attention_item(p, block_q, item, scratch, kc, dim, vc, dim);
  }
}

}  // namespace CPU_CAPABILITY
}  // namespace sglang_diffusion::cpu
