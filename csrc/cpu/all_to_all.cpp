// The Ulysses layout changes (../params/all_to_all.h). No vector code of its own: memcpy of a
// row is already as wide as the machine allows, so there are no ISA builds.
#include "ops.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

namespace sglang_diffusion::cpu {

void permute_rows(const PermuteRowsParams& p) {
  const int64_t row_bytes = p.row_len * p.elem_size;
  const auto* src = static_cast<const char*>(p.src);
  auto* out = static_cast<char*>(p.out);
  // A task of at least ~256 KiB: smaller ones cost more to hand out than to copy.
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 18) / std::max<int64_t>(1, row_bytes));
  at::parallel_for(0, p.rows, grain, [&](int64_t begin, int64_t end) {
    // The source offset of row `begin`, then carried along like an odometer.
    int64_t idx[kPermuteMaxDims] = {};
    int64_t rem = begin;
    int64_t offset = 0;
    for (int i = p.ndim - 1; i >= 0; --i) {
      idx[i] = rem % p.sizes[i];
      rem /= p.sizes[i];
      offset += idx[i] * p.src_strides[i];
    }
    for (int64_t r = begin; r < end; ++r) {
      std::memcpy(out + r * row_bytes, src + offset * p.elem_size, row_bytes);
      for (int i = p.ndim - 1; i >= 0; --i) {
        offset += p.src_strides[i];
        if (++idx[i] < p.sizes[i]) {
          break;
        }
        offset -= idx[i] * p.src_strides[i];
        idx[i] = 0;
      }
    }
  });
}

}  // namespace sglang_diffusion::cpu
