// The CPU kernels' entry points, one per op of csrc/params/ (which says each op's math).
// No torch headers: csrc/bindings.cpp checks every tensor and fills the struct. Each runs the
// `isa` build of its kernel (isa.h) on torch's OpenMP threads (dispatch.h).
#pragma once

#include "../params/activation.h"
#include "../params/all_to_all.h"
#include "../params/attention.h"
#include "../params/norm.h"
#include "../params/qk_norm.h"
#include "../params/rope.h"
#include "../params/sliding_tile_attention.h"
#include "isa.h"

namespace sglang_diffusion::cpu {

// Over the B * S rows (norm.cpp).
void norm_modulate(const NormModulateParams& params, Isa isa);

// Over the rows (qk_norm.cpp).
void rms_rows(const RmsRowsParams& params, Isa isa);

// Over the B * S tokens (rope.cpp).
void rope(const RopeParams& params, Isa isa);

// Over (batch, head, query block) work items, fp32 accumulation for every dtype (attention.cpp).
void attention(const AttentionParams& params, Isa isa);

// Over (batch, head, query block) work items, each against its query group's key runs only
// (sliding_tile_attention.cpp).
void sliding_tile_attention(const SlidingTileAttentionParams& params, Isa isa);

// Over chunks of the flat buffer (activation.cpp).
void gelu_tanh(const GeluTanhParams& params, Isa isa);

// Over rows of D elements, one memcpy each; no ISA builds: memcpy is as wide as the machine
// allows (all_to_all.cpp).
void permute_rows(const PermuteRowsParams& params);

}  // namespace sglang_diffusion::cpu
