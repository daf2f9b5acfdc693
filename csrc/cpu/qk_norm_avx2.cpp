// The AVX2 + FMA build of qk_norm_kernel.h (see isa.h); qk_norm.cpp calls it where torch
// reports AVX2.
#if !defined(CPU_CAPABILITY_AVX2)
#error "qk_norm_avx2.cpp must be compiled with setup.py's AVX2 flags (see csrc/cpu/isa.h)"
#endif

#include "qk_norm_kernel.h"
