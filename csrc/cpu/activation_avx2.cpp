// The AVX2 + FMA build of activation_kernel.h (see isa.h); activation.cpp calls it where torch
// reports AVX2.
#if !defined(CPU_CAPABILITY_AVX2)
#error "activation_avx2.cpp must be compiled with setup.py's AVX2 flags (see csrc/cpu/isa.h)"
#endif

#include "activation_kernel.h"
