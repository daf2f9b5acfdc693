// The AVX2 + FMA build of norm_kernel.h (see isa.h); norm.cpp calls it where torch reports
// AVX2. Nothing may be included above the pragma except headers without code (norm.h).
#include "norm.h"

#if SGLD_CPU_HAVE_AVX2_BUILD
#pragma GCC target("avx,avx2,fma,f16c")
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#include "norm_kernel.h"
#endif
