// CPU instruction-set builds of the kernels, and which one runs.
//
// A wheel must run on any x86-64 CPU, so the extension is compiled for the baseline ISA, and
// each kernel has two more translation units, <op>_avx2.cpp and <op>_avx512.cpp, that include
// the same <op>_kernel.h. setup.py compiles them on their own, as ATen builds its own kernels:
//   avx2:    -mavx2 -mfma -mf16c -DCPU_CAPABILITY=AVX2 -DCPU_CAPABILITY_AVX2
//   avx512:  -mavx512f -mavx512bw -mavx512vl -mavx512dq -mfma -mf16c
//            -DCPU_CAPABILITY=AVX512 -DCPU_CAPABILITY_AVX512
// (x86-64 only, where every unit also gets SGLD_CPU_X86_BUILDS=1). ATen's Vectorized<T> then
// uses its 256- or 512-bit implementation, and the inline namespace CPU_CAPABILITY keeps the
// builds' symbols apart. dispatch.h is how an op's entry point picks one.
//
// Which build runs (active_isa): SGLD_CPU_ISA=default|avx2|avx512 forces one (an error when
// this CPU or this build lacks it, never a silent fallback); unset or "auto", the widest that
// both this CPU (cpuid) and torch's own CPU capability allow, so ATEN_CPU_CAPABILITY=default
// selects the portable build too. AVX-512 is never chosen on a CPU without F, BW, VL and DQ.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#ifndef SGLD_CPU_X86_BUILDS
#define SGLD_CPU_X86_BUILDS 0
#endif

namespace sglang_diffusion::cpu {

enum class Isa : int8_t { kDefault, kAvx2, kAvx512 };

const char* isa_name(Isa isa);

// The builds this CPU can run, narrowest first ("default" always).
std::vector<Isa> supported_isas();

// The build the kernels run now (reads SGLD_CPU_ISA on every call, so a test can switch).
Isa active_isa();

}  // namespace sglang_diffusion::cpu
