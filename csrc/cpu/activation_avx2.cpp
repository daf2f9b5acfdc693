// The AVX2 build of activation_kernel.h (isa.h says the flags); activation.cpp picks it (dispatch.h).
#if !defined(CPU_CAPABILITY_AVX2)
#error "activation_avx2.cpp must be compiled with setup.py's AVX2 flags (see csrc/cpu/isa.h)"
#endif

#include "activation_kernel.h"
