// The AVX2 + FMA build of norm_kernel.h (see isa.h); norm.cpp calls it where torch reports AVX2.
#if !defined(CPU_CAPABILITY_AVX2)
#error "norm_avx2.cpp must be compiled with setup.py's AVX2 flags (see csrc/cpu/isa.h)"
#endif

#include "norm_kernel.h"
