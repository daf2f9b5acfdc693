// The Ulysses layout changes (ops/all_to_all.py): a strided gather of rows.
//
//   out (contiguous, `ndim` dims of `sizes`, then rows of `row_len`) = src viewed with
//   `src_strides`
//
// Every layout change around all_to_all_single keeps the head dim D contiguous on both sides,
// so the copy moves whole rows of D elements.
#pragma once

#include <cstdint>

namespace sglang_diffusion {

inline constexpr int kPermuteMaxDims = 6;

struct PermuteRowsParams {
  const void* src = nullptr;
  void* out = nullptr;
  int ndim = 0;                               // dims before the row dim, <= kPermuteMaxDims
  int64_t sizes[kPermuteMaxDims] = {};        // of out (and of the src view)
  int64_t src_strides[kPermuteMaxDims] = {};  // in elements
  int64_t rows = 0;                           // product of sizes
  int64_t row_len = 0;                        // D
  int64_t elem_size = 0;                      // bytes
};

}  // namespace sglang_diffusion
