// Tanh-approximate GELU (activation.h): the portable build of activation_kernel.h and the
// entry point, which splits the buffer over torch's OpenMP threads.
#define CPU_CAPABILITY DEFAULT
#define CPU_CAPABILITY_DEFAULT

#include "activation.h"

#include <ATen/Parallel.h>

#include <cstdint>

#include "activation_kernel.h"

namespace sglang_diffusion::cpu {

#if SGLD_CPU_HAVE_AVX2_BUILD
namespace AVX2 {
void gelu_tanh(const GeluTanhParams& p, int64_t begin, int64_t end);
}  // namespace AVX2
#endif

void gelu_tanh(const GeluTanhParams& params, Isa isa) {
  auto chunk = &DEFAULT::gelu_tanh;
#if SGLD_CPU_HAVE_AVX2_BUILD
  if (isa == Isa::kAvx2) {
    chunk = &AVX2::gelu_tanh;
  }
#endif
  // A task of at least ~32K values: smaller ones cost more to hand out than to run.
  constexpr int64_t grain = int64_t{1} << 15;
  at::parallel_for(0, params.n, grain, [&](int64_t begin, int64_t end) { chunk(params, begin, end); });
}

}  // namespace sglang_diffusion::cpu
