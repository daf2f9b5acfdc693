// The AVX512 build of sliding_tile_attention_kernel.h (isa.h says the flags);
// sliding_tile_attention.cpp picks it (dispatch.h).
#if !defined(CPU_CAPABILITY_AVX512)
#error "sliding_tile_attention_avx512.cpp must be compiled with setup.py's AVX512 flags (see csrc/cpu/isa.h)"
#endif

#include "sliding_tile_attention_kernel.h"
