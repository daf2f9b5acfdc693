// Fused norm + adaLN modulation (../params/norm.h): the portable build of norm_kernel.h and the
// entry point (dispatch.h).
#define CPU_CAPABILITY DEFAULT
#define CPU_CAPABILITY_DEFAULT

#include "dispatch.h"
#include "norm_kernel.h"
#include "ops.h"

namespace sglang_diffusion::cpu {

SGLD_CPU_ISA_BUILDS(norm_modulate_rows)

void norm_modulate(const NormModulateParams& p, Isa isa) {
  parallel_rows(SGLD_CPU_BUILD(norm_modulate_rows, isa), p.batch * p.seq_len, rows_per_task(p.dim), p);
}

}  // namespace sglang_diffusion::cpu
