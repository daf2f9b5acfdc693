// The tiles of the CPU attention kernels (attention_kernel.h; sliding_tile_attention_kernel.h
// visits other keys with the same tiles), compiled once per CPU build (isa.h).
//
// FlashAttention-2's online softmax (Dao, 2023) with CPU tiling. attention_block runs one
// block of BQ queries of one (batch, head) against runs of keys; for each block of BK keys:
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
// same 6 x (2 vectors) micro-kernel (the BLIS shape for AVX2's 16 registers: 12 accumulators, 8
// loads per 12 FMAs; AVX-512 runs it with 16-lane vectors), broadcasting from K or V rows (fp32
// rows, copied and widened once per batch and head per thread, see KvRows) and loading vectors
// of queries from Q^T, packed once per block (pre-scaled, widened, zero-padded to BQ), or from
// P^T. Every storage dtype is read and written as it is; all arithmetic is fp32.
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <type_traits>

#include "../params/attention.h"
#include "vec16.h"

namespace sglang_diffusion::cpu {

inline constexpr int64_t kAttnBlockQ = 128;  // queries per work item (2 x a multiple of 16)
inline constexpr int64_t kAttnBlockK = 128;  // keys per online-softmax step

inline namespace CPU_CAPABILITY {

namespace attn {

using fVec = at::vec::Vectorized<float>;
constexpr int kLanes = fVec::size();
constexpr int kMR = 6;               // micro-tile rows
constexpr int kNR = 2 * kLanes;      // micro-tile columns
static_assert(kAttnBlockQ % kNR == 0 && (kAttnBlockQ / 2) % kNR == 0);  // AVX-512: kNR = 32

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

// K and V of one (batch, head) as contiguous fp32 rows [seq_k, D]: read in place when they are
// fp32 and already contiguous, else copied (and widened) once. A thread's work items are
// consecutive, so it meets each (batch, head) once, for many query blocks (rows H*D apart in
// [B, S, H, D] touch a new page every few rows; measured: +8% at S=4096, H=12, D=128).
template <typename T>
class KvRows {
 public:
  explicit KvRows(const AttentionParams& p)
      : in_place_(std::is_same_v<T, float> && p.k_stride_s == p.head_dim &&
                  p.v_stride_s == p.head_dim),
        buf_(in_place_ ? nullptr : new float[2 * p.seq_k * p.head_dim]) {}

  // Makes k() and v() those of (b, h); a no-op when they already are.
  void load(const AttentionParams& p, int64_t b, int64_t h) {
    const int64_t bh = b * p.heads + h;
    if (bh == loaded_) {
      return;
    }
    loaded_ = bh;
    const T* k = static_cast<const T*>(p.k) + b * p.k_stride_b + h * p.k_stride_h;
    const T* v = static_cast<const T*>(p.v) + b * p.v_stride_b + h * p.v_stride_h;
    if (in_place_) {
      if constexpr (std::is_same_v<T, float>) {
        k_ = k;
        v_ = v;
      }
      return;
    }
    const int64_t dim = p.head_dim;
    float* kdst = buf_.get();
    float* vdst = kdst + p.seq_k * dim;
    for (int64_t n = 0; n < p.seq_k; ++n) {
      std::copy_n(k + n * p.k_stride_s, dim, kdst + n * dim);  // converts to float
      std::copy_n(v + n * p.v_stride_s, dim, vdst + n * dim);
    }
    k_ = kdst;
    v_ = vdst;
  }

  const float* k() const { return k_; }
  const float* v() const { return v_; }

 private:
  bool in_place_;
  std::unique_ptr<float[]> buf_;
  int64_t loaded_ = -1;
  const float* k_ = nullptr;
  const float* v_ = nullptr;
};

// Queries [i0, i0 + mq) of (b, h), mq <= bq (bq: a multiple of kNR that `s` was made for),
// against the key runs [runs[2r], runs[2r + 1]) for r < n_runs (dense attention: one run
// [0, seq_k)); writes their out rows (in T) and lse. Without any key: zeros, lse -inf.
template <typename T>
inline void attention_block(const AttentionParams& p, int64_t b, int64_t h, int64_t i0, int64_t mq,
                            int64_t bq, const int64_t* runs, int64_t n_runs, const KvRows<T>& kv,
                            Scratch& s) {
  const int64_t dim = p.head_dim;

  // Pack Q^T [D, bq], pre-scaled; padding queries are zero (finite scores, results dropped).
  float* qt = s.qt.get();
  const T* qbase = static_cast<const T*>(p.q) + b * p.q_stride_b + h * p.q_stride_h + i0 * p.q_stride_s;
  for (int64_t i = 0; i < bq; ++i) {
    const T* row = qbase + i * p.q_stride_s;
    for (int64_t d = 0; d < dim; ++d) {
      qt[d * bq + i] = i < mq ? static_cast<float>(row[d]) * p.scale : 0.0f;
    }
  }

  bool first = true;
  for (int64_t r = 0; r < n_runs; ++r) {
    const int64_t lo = runs[2 * r], hi = runs[2 * r + 1];
    for (int64_t n0 = lo; n0 < hi; n0 += kAttnBlockK) {
      const int64_t nk = std::min(kAttnBlockK, hi - n0);
      scores(kv.k() + n0 * dim, dim, dim, nk, bq, s);
      online_softmax(s.st.get(), nk, bq, s, first);
      accumulate(kv.v() + n0 * dim, dim, dim, nk, bq, s, first);
      first = false;
    }
  }

  // out[i, d] = O^T[d, i] / l[i]: one transposing pass per block.
  T* obase = static_cast<T*>(p.out) + b * p.out_stride_b + h * p.out_stride_h + i0 * p.out_stride_s;
  float* lse = p.lse + (b * p.heads + h) * p.seq_q + i0;
  const float* ot = s.ot.get();
  for (int64_t i = 0; i < mq; ++i) {
    T* dst = obase + i * p.out_stride_s;
    if (first) {
      std::fill_n(dst, dim, T(0.0f));
      lse[i] = -std::numeric_limits<float>::infinity();
      continue;
    }
    const float inv_l = 1.0f / s.l[i];
    for (int64_t d = 0; d < dim; ++d) {
      dst[d] = static_cast<T>(ot[d * bq + i] * inv_l);
    }
    lse[i] = s.m[i] + std::log(s.l[i]);
  }
}

}  // namespace attn
}  // namespace CPU_CAPABILITY
}  // namespace sglang_diffusion::cpu
