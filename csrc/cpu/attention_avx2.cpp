// The AVX2 + FMA build of attention_kernel.h (see isa.h); attention.cpp calls it where torch
// reports AVX2.
#if !defined(CPU_CAPABILITY_AVX2)
#error "attention_avx2.cpp must be compiled with setup.py's AVX2 flags (see csrc/cpu/isa.h)"
#endif

#include "attention_kernel.h"
