// Attention forward (attention.h): the portable build of attention_kernel.h and the entry
// point, which splits the (batch, head, query block) work items over torch's threads.
#define CPU_CAPABILITY DEFAULT
#define CPU_CAPABILITY_DEFAULT

#include "attention.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

#include "attention_kernel.h"

namespace sglang_diffusion::cpu {

#if SGLD_CPU_HAVE_AVX2_BUILD
namespace AVX2 {
void attention_items(const AttentionParams& p, int64_t block_q, int64_t begin, int64_t end);
}  // namespace AVX2
#endif

void attention(const AttentionParams& params, Isa isa) {
  auto items_fn = &DEFAULT::attention_items;
#if SGLD_CPU_HAVE_AVX2_BUILD
  if (isa == Isa::kAvx2) {
    items_fn = &AVX2::attention_items;
  }
#endif
  // Query blocks of kAttnBlockQ rows keep the score tile, Q^T and O^T in L2 and give the
  // micro-kernels long runs; half that when whole blocks would leave threads idle.
  const int64_t threads = at::get_num_threads();
  int64_t block_q = kAttnBlockQ;
  const auto items_for = [&](int64_t bq) {
    return params.batch * params.heads * ((params.seq_q + bq - 1) / bq);
  };
  if (items_for(block_q) < 4 * threads) {
    block_q = kAttnBlockQ / 2;
  }
  at::parallel_for(0, items_for(block_q), 1, [&](int64_t begin, int64_t end) {
    items_fn(params, block_q, begin, end);
  });
}

}  // namespace sglang_diffusion::cpu
