// Tanh-approximate GELU (../params/activation.h): the portable build of activation_kernel.h and
// the entry point (dispatch.h).
#define CPU_CAPABILITY DEFAULT
#define CPU_CAPABILITY_DEFAULT

#include "dispatch.h"
#include "activation_kernel.h"
#include "ops.h"

namespace sglang_diffusion::cpu {

SGLD_CPU_ISA_BUILDS(gelu_tanh)

void gelu_tanh(const GeluTanhParams& p, Isa isa) {
  parallel_rows(SGLD_CPU_BUILD(gelu_tanh, isa), p.n, rows_per_task(1), p);
}

}  // namespace sglang_diffusion::cpu
