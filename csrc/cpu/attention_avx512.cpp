// The AVX512 build of attention_kernel.h (isa.h says the flags); attention.cpp picks it (dispatch.h).
#if !defined(CPU_CAPABILITY_AVX512)
#error "attention_avx512.cpp must be compiled with setup.py's AVX512 flags (see csrc/cpu/isa.h)"
#endif

#include "attention_kernel.h"
