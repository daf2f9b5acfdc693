// The AVX512 build of rope_kernel.h (isa.h says the flags); rope.cpp picks it (dispatch.h).
#if !defined(CPU_CAPABILITY_AVX512)
#error "rope_avx512.cpp must be compiled with setup.py's AVX512 flags (see csrc/cpu/isa.h)"
#endif

#include "rope_kernel.h"
