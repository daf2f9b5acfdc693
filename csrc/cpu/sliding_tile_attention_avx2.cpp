// The AVX2 build of sliding_tile_attention_kernel.h (isa.h says the flags);
// sliding_tile_attention.cpp picks it (dispatch.h).
#if !defined(CPU_CAPABILITY_AVX2)
#error "sliding_tile_attention_avx2.cpp must be compiled with setup.py's AVX2 flags (see csrc/cpu/isa.h)"
#endif

#include "sliding_tile_attention_kernel.h"
