// The AVX2 + FMA build of rope_kernel.h (see isa.h); rope.cpp calls it where torch reports AVX2.
#if !defined(CPU_CAPABILITY_AVX2)
#error "rope_avx2.cpp must be compiled with setup.py's AVX2 flags (see csrc/cpu/isa.h)"
#endif

#include "rope_kernel.h"
