// RMS rows (qk_norm.h): the portable build of qk_norm_kernel.h and the entry point, which
// splits the rows over torch's OpenMP threads.
#define CPU_CAPABILITY DEFAULT
#define CPU_CAPABILITY_DEFAULT

#include "qk_norm.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

#include "qk_norm_kernel.h"

namespace sglang_diffusion::cpu {

#if SGLD_CPU_HAVE_AVX2_BUILD
namespace AVX2 {
void rms_rows(const RmsRowsParams& p, int64_t begin, int64_t end);
}  // namespace AVX2
#endif

void rms_rows(const RmsRowsParams& params, Isa isa) {
  auto rows = &DEFAULT::rms_rows;
#if SGLD_CPU_HAVE_AVX2_BUILD
  if (isa == Isa::kAvx2) {
    rows = &AVX2::rms_rows;
  }
#endif
  // A task of at least ~32K values: smaller ones cost more to hand out than to run.
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 15) / std::max<int64_t>(1, params.width));
  at::parallel_for(0, params.rows, grain, [&](int64_t begin, int64_t end) { rows(params, begin, end); });
}

}  // namespace sglang_diffusion::cpu
