// The AVX2 build of rope_kernel.h (isa.h says the flags); rope.cpp picks it (dispatch.h).
#if !defined(CPU_CAPABILITY_AVX2)
#error "rope_avx2.cpp must be compiled with setup.py's AVX2 flags (see csrc/cpu/isa.h)"
#endif

#include "rope_kernel.h"
