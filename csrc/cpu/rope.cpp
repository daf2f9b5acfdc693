// RoPE (rope.h): the portable build of rope_kernel.h and the entry point, which splits the
// tokens over torch's OpenMP threads.
#define CPU_CAPABILITY DEFAULT
#define CPU_CAPABILITY_DEFAULT

#include "rope.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

#include "rope_kernel.h"

namespace sglang_diffusion::cpu {

#if SGLD_CPU_HAVE_AVX2_BUILD
namespace AVX2 {
void rope_rows(const RopeParams& p, int64_t begin, int64_t end);
}  // namespace AVX2
#endif

void rope(const RopeParams& params, Isa isa) {
  auto rows = &DEFAULT::rope_rows;
#if SGLD_CPU_HAVE_AVX2_BUILD
  if (isa == Isa::kAvx2) {
    rows = &AVX2::rope_rows;
  }
#endif
  // A task of at least ~32K values: smaller ones cost more to hand out than to run.
  const int64_t per_token = std::max<int64_t>(1, (params.heads_q + params.heads_k) * params.head_dim);
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 15) / per_token);
  at::parallel_for(0, params.batch * params.seq_len, grain, [&](int64_t begin, int64_t end) {
    rows(params, begin, end);
  });
}

}  // namespace sglang_diffusion::cpu
