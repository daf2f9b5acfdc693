// The AVX2 build of norm_kernel.h (isa.h says the flags); norm.cpp picks it (dispatch.h).
#if !defined(CPU_CAPABILITY_AVX2)
#error "norm_avx2.cpp must be compiled with setup.py's AVX2 flags (see csrc/cpu/isa.h)"
#endif

#include "norm_kernel.h"
