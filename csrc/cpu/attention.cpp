// Attention forward (../params/attention.h): the portable build of attention_kernel.h and the
// entry point (dispatch.h).
#define CPU_CAPABILITY DEFAULT
#define CPU_CAPABILITY_DEFAULT

#include "dispatch.h"
#include "attention_kernel.h"
#include "ops.h"

namespace sglang_diffusion::cpu {

SGLD_CPU_ISA_BUILDS(attention_items)

void attention(const AttentionParams& p, Isa isa) {
  // Query blocks of kAttnBlockQ rows keep the score tile, Q^T and O^T in L2 and give the
  // micro-kernels long runs; half that when whole blocks would leave threads idle.
  const auto items_for = [&](int64_t bq) { return p.batch * p.heads * ((p.seq_q + bq - 1) / bq); };
  const int64_t block_q = items_for(kAttnBlockQ) < 4 * at::get_num_threads() ? kAttnBlockQ / 2 : kAttnBlockQ;
  parallel_rows(SGLD_CPU_BUILD(attention_items, isa), items_for(block_q), 1, p, block_q);
}

}  // namespace sglang_diffusion::cpu
