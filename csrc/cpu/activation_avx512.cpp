// The AVX512 build of activation_kernel.h (isa.h says the flags); activation.cpp picks it (dispatch.h).
#if !defined(CPU_CAPABILITY_AVX512)
#error "activation_avx512.cpp must be compiled with setup.py's AVX512 flags (see csrc/cpu/isa.h)"
#endif

#include "activation_kernel.h"
