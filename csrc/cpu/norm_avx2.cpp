// The AVX2 + FMA build of norm_kernel.h (see isa.h); norm.cpp calls it where torch reports
// AVX2. Nothing may be included above the pragma except headers without code (norm.h).
#include "norm.h"

#if SGLD_CPU_HAVE_AVX2_BUILD
#pragma GCC target("avx,avx2,fma,f16c")
// g++ does not define the ISA macros for a target pragma (gcc does), and sleef.h, which ATen's
// AVX2 Vectorized<float> includes, declares its 256-bit functions only under them.
#define __AVX__ 1
#define __AVX2__ 1
#define __FMA__ 1
#define __F16C__ 1
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#include "norm_kernel.h"
#endif
