// RoPE (../params/rope.h): the portable build of rope_kernel.h and the entry point (dispatch.h).
#define CPU_CAPABILITY DEFAULT
#define CPU_CAPABILITY_DEFAULT

#include "dispatch.h"
#include "rope_kernel.h"
#include "ops.h"

namespace sglang_diffusion::cpu {

SGLD_CPU_ISA_BUILDS(rope_rows)

void rope(const RopeParams& p, Isa isa) {
  const int64_t per_token = (p.heads_q + p.heads_k) * p.head_dim;
  parallel_rows(SGLD_CPU_BUILD(rope_rows, isa), p.batch * p.seq_len, rows_per_task(per_token), p);
}

}  // namespace sglang_diffusion::cpu
