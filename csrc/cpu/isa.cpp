// Which CPU build of the kernels runs (isa.h).
#include "isa.h"

#include <ATen/Version.h>
#include <c10/util/Exception.h>

#include <cstdlib>
#include <string>
#include <vector>

namespace sglang_diffusion::cpu {

namespace {

// What this CPU reports (cpuid), for the instructions each build's flags allow.
bool cpu_has(Isa isa) {
#if SGLD_CPU_X86_BUILDS
  switch (isa) {
    case Isa::kDefault:
      return true;
    case Isa::kAvx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
             __builtin_cpu_supports("f16c");
    case Isa::kAvx512:
      return cpu_has(Isa::kAvx2) && __builtin_cpu_supports("avx512f") &&
             __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
             __builtin_cpu_supports("avx512dq");
  }
  return false;
#else
  return isa == Isa::kDefault;
#endif
}

// The widest build torch itself runs ("DEFAULT", "AVX2", "AVX512"; ATEN_CPU_CAPABILITY
// lowers it).
Isa torch_isa() {
  const std::string capability = at::get_cpu_capability();
  if (capability == "AVX512") {
    return Isa::kAvx512;
  }
  return capability == "AVX2" ? Isa::kAvx2 : Isa::kDefault;
}

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx2:
      return "avx2";
    case Isa::kAvx512:
      return "avx512";
    default:
      return "default";
  }
}

std::vector<Isa> supported_isas() {
  std::vector<Isa> isas;
  for (Isa isa : {Isa::kDefault, Isa::kAvx2, Isa::kAvx512}) {
    if (cpu_has(isa)) {
      isas.push_back(isa);
    }
  }
  return isas;
}

Isa active_isa() {
  const char* forced = std::getenv("SGLD_CPU_ISA");
  const std::vector<Isa> supported = supported_isas();
  if (forced == nullptr || *forced == '\0' || std::string(forced) == "auto") {
    const Isa cap = torch_isa();
    Isa best = Isa::kDefault;
    for (Isa isa : supported) {
      if (isa <= cap) {
        best = isa;
      }
    }
    return best;
  }
  for (Isa isa : {Isa::kDefault, Isa::kAvx2, Isa::kAvx512}) {
    if (forced == std::string(isa_name(isa))) {
      TORCH_CHECK(cpu_has(isa), "SGLD_CPU_ISA=", forced, ": this CPU ",
                  SGLD_CPU_X86_BUILDS ? "does not report the instructions of that build"
                                      : "is not x86-64, where only the default build exists");
      return isa;
    }
  }
  TORCH_CHECK(false, "SGLD_CPU_ISA must be auto, default, avx2 or avx512, got '", forced, "'");
}

}  // namespace sglang_diffusion::cpu
