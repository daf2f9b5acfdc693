// The AVX2 build of attention_kernel.h (isa.h says the flags); attention.cpp picks it (dispatch.h).
#if !defined(CPU_CAPABILITY_AVX2)
#error "attention_avx2.cpp must be compiled with setup.py's AVX2 flags (see csrc/cpu/isa.h)"
#endif

#include "attention_kernel.h"
