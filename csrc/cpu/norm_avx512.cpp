// The AVX512 build of norm_kernel.h (isa.h says the flags); norm.cpp picks it (dispatch.h).
#if !defined(CPU_CAPABILITY_AVX512)
#error "norm_avx512.cpp must be compiled with setup.py's AVX512 flags (see csrc/cpu/isa.h)"
#endif

#include "norm_kernel.h"
