// RMS rows (../params/qk_norm.h): the portable build of qk_norm_kernel.h and the entry point
// (dispatch.h).
#define CPU_CAPABILITY DEFAULT
#define CPU_CAPABILITY_DEFAULT

#include "dispatch.h"
#include "qk_norm_kernel.h"
#include "ops.h"

namespace sglang_diffusion::cpu {

SGLD_CPU_ISA_BUILDS(rms_rows)

void rms_rows(const RmsRowsParams& p, Isa isa) {
  parallel_rows(SGLD_CPU_BUILD(rms_rows, isa), p.rows, rows_per_task(p.width), p);
}

}  // namespace sglang_diffusion::cpu
