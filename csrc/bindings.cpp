// torch.ops.sglang_diffusion_C: the only C++ that sees a tensor. Every condition a kernel
// relies on is checked here, one message per condition; kernels get a plain params struct
// (csrc/params/), one per op for the CPU and the CUDA kernel alike. Each op is one function,
// registered for both devices: check, fill the struct, run the kernel of the inputs' device.
// The ops write into caller-given outputs; sglang_diffusion/ops/ wraps them as functional
// torch.library custom ops with fake implementations.
#include <Python.h>

#include <ATen/MemoryOverlap.h>
#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "cpu/isa.h"
#include "cpu/ops.h"

#ifdef SGLD_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "cuda/ops.h"
#endif

namespace {

namespace sgld = sglang_diffusion;
namespace cpu = sglang_diffusion::cpu;
#ifdef SGLD_WITH_CUDA
namespace cuda = sglang_diffusion::cuda;
#endif

// The CPU build the kernels run now (isa.h: SGLD_CPU_ISA, this CPU, torch's capability).
std::string cpu_isa_name() {
  return cpu::isa_name(cpu::active_isa());
}

// Every build this CPU can run, for tests that run each one (SGLD_CPU_ISA=<name>).
std::vector<std::string> cpu_isa_names() {
  std::vector<std::string> names;
  for (cpu::Isa isa : cpu::supported_isas()) {
    names.emplace_back(cpu::isa_name(isa));
  }
  return names;
}

bool is_kernel_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kBFloat16 || t == at::kHalf;
}

sgld::DType dtype_of(at::ScalarType t) {
  switch (t) {
    case at::kBFloat16:
      return sgld::DType::kBFloat16;
    case at::kHalf:
      return sgld::DType::kFloat16;
    default:
      return sgld::DType::kFloat32;
  }
}

template <typename T>
struct NonDeduced {
  using type = T;
};

#ifdef SGLD_WITH_CUDA
template <typename Params>
using CudaLauncher = cudaError_t (*)(const Params&, cudaStream_t);
#define SGLD_CUDA_LAUNCHER(fn) &cuda::fn
#else
template <typename Params>
using CudaLauncher = std::nullptr_t;
#define SGLD_CUDA_LAUNCHER(fn) nullptr
#endif

// Runs the kernel of `like`'s device on p: the CPU build for the active ISA, or the CUDA
// launcher on the device's current stream (its launch error raised with the op's name).
template <typename Params>
void run_kernel(const at::Tensor& like, const char* op, const Params& p,
                typename NonDeduced<void (*)(const Params&, cpu::Isa)>::type on_cpu,
                typename NonDeduced<CudaLauncher<Params>>::type on_cuda) {
  if (like.device().is_cpu()) {
    on_cpu(p, cpu::active_isa());
    return;
  }
#ifdef SGLD_WITH_CUDA
  const c10::cuda::CUDAGuard guard(like.device());
  const cudaError_t err = on_cuda(p, at::cuda::getCurrentCUDAStream(like.device().index()).stream());
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA kernel launch failed: ", cudaGetErrorString(err));
#else
  (void)on_cuda;
  TORCH_CHECK(false, op, ": _C was built without CUDA kernels, got tensors on ", like.device());
#endif
}

// Every tensor of a call is on the first input's device type (the dispatcher picks the kernel
// by the inputs' devices; this catches a mixed call) and on that very device.
void check_device(const at::Tensor& t, const at::Tensor& first, const char* op, const char* name) {
  TORCH_CHECK(t.device() == first.device(), op, ": ", name, " must be on ", first.device(),
              " (the first input's device), got one on ", t.device());
}

void check_x(const at::Tensor& x, const char* op, const char* name) {
  TORCH_CHECK(x.dim() == 3, op, ": ", name, " must be 3-D [B, S, D], got shape ", x.sizes());
  TORCH_CHECK(is_kernel_dtype(x.scalar_type()), op, ": ", name,
              " must be float32, bfloat16 or float16, got ", x.scalar_type());
  TORCH_CHECK(x.size(2) > 0, op, ": ", name, " must have D > 0, got shape ", x.sizes());
  TORCH_CHECK(x.is_contiguous(), op, ": ", name, " must be contiguous");
}

// An activation-shaped tensor (out, residual, ...): like `x` in device, shape, dtype, layout.
void check_like_x(const at::Tensor& t, const at::Tensor& x, const char* op, const char* name) {
  check_device(t, x, op, name);
  TORCH_CHECK(t.sizes() == x.sizes(), op, ": ", name, " must have x's shape ", x.sizes(),
              ", got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), op, ": ", name, " must have x's dtype ",
              x.scalar_type(), ", got ", t.scalar_type());
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous");
}

// scale, shift, gate: [D], [B, 1, D], [B, S, D] or any shape that broadcasts to x's.
sgld::ModParam modulation(const at::Tensor& t, const at::Tensor& x, const char* op,
                          const char* name) {
  check_device(t, x, op, name);
  TORCH_CHECK(t.dim() >= 1 && t.dim() <= 3, op, ": ", name,
              " must have 1 to 3 dims ([D], [B, 1, D], [B, S, D]), got shape ", t.sizes());
  TORCH_CHECK(t.size(-1) == x.size(2), op, ": ", name, "'s last dim must be D = ", x.size(2),
              ", got shape ", t.sizes());
  bool broadcasts = true;
  for (int64_t i = 1; i <= t.dim(); ++i) {
    broadcasts = broadcasts && (t.size(-i) == 1 || t.size(-i) == x.size(-i));
  }
  TORCH_CHECK(broadcasts, op, ": ", name, " of shape ", t.sizes(),
              " does not broadcast to x's shape ", x.sizes());
  TORCH_CHECK(t.size(-1) == 1 || t.stride(-1) == 1, op, ": ", name,
              " must be contiguous in its last dim, got stride ", t.stride(-1));
  const at::Tensor expanded = t.expand(x.sizes());  // a view: broadcast dims get stride 0
  return {t.data_ptr(), expanded.stride(0), expanded.stride(1)};
}

// weight, bias: [width], any float dtype; returned as contiguous float32 (cheap).
std::optional<at::Tensor> affine(const std::optional<at::Tensor>& t, const at::Tensor& x,
                                 int64_t width, const char* what, const char* op,
                                 const char* name) {
  if (!t.has_value()) {
    return std::nullopt;
  }
  check_device(*t, x, op, name);
  TORCH_CHECK(t->dim() == 1 && t->size(0) == width, op, ": ", name, " must be [", what, "] = [",
              width, "], got shape ", t->sizes());
  TORCH_CHECK(at::isFloatingType(t->scalar_type()), op, ": ", name,
              " must be a floating-point tensor, got ", t->scalar_type());
  return t->to(at::kFloat).contiguous();
}

const float* data_or_null(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->data_ptr<float>() : nullptr;
}

void check_eps(double eps, const char* op) {
  TORCH_CHECK(std::isfinite(eps) && eps >= 0, op, ": eps must be finite and >= 0, got ", eps);
}

// ---- norm_modulate, gated_residual_norm_modulate -------------------------------------------

// The norm ops' checks and struct (the gated variant's fields are the caller's); weight32 and
// bias32 receive the float32 copies the struct points into.
sgld::NormModulateParams norm_params(
    const at::Tensor& x, const at::Tensor& out, const at::Tensor& scale, const at::Tensor& shift,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias, double eps,
    c10::string_view norm_type, const char* op, std::optional<at::Tensor>& weight32,
    std::optional<at::Tensor>& bias32) {
  check_like_x(out, x, op, "out");
  TORCH_CHECK(norm_type == "layer" || norm_type == "rms", op,
              ": norm_type must be 'layer' or 'rms', got '", std::string(norm_type), "'");
  check_eps(eps, op);
  const at::ScalarType mod_dtype = scale.scalar_type();
  TORCH_CHECK(mod_dtype == x.scalar_type() || mod_dtype == at::kFloat, op,
              ": scale must have x's dtype (", x.scalar_type(), ") or float32, got ", mod_dtype);
  TORCH_CHECK(shift.scalar_type() == mod_dtype, op, ": shift must have scale's dtype ",
              mod_dtype, ", got ", shift.scalar_type());
  weight32 = affine(weight, x, x.size(2), "D", op, "weight");
  bias32 = affine(bias, x, x.size(2), "D", op, "bias");

  sgld::NormModulateParams p;
  p.x = x.data_ptr();
  p.out = out.data_ptr();
  p.scale = modulation(scale, x, op, "scale");
  p.shift = modulation(shift, x, op, "shift");
  p.weight = data_or_null(weight32);
  p.bias = data_or_null(bias32);
  p.batch = x.size(0);
  p.seq_len = x.size(1);
  p.dim = x.size(2);
  p.eps = static_cast<float>(eps);
  p.rms = norm_type == "rms";
  p.dtype = dtype_of(x.scalar_type());
  p.mod_dtype = dtype_of(mod_dtype);
  return p;
}

// out = norm(x) * (1 + scale) + shift
void norm_modulate_out(at::Tensor& out, const at::Tensor& x, const at::Tensor& scale,
                       const at::Tensor& shift, const std::optional<at::Tensor>& weight,
                       const std::optional<at::Tensor>& bias, double eps,
                       c10::string_view norm_type) {
  constexpr const char* op = "norm_modulate";
  check_x(x, op, "x");
  std::optional<at::Tensor> weight32, bias32;
  const sgld::NormModulateParams p =
      norm_params(x, out, scale, shift, weight, bias, eps, norm_type, op, weight32, bias32);
  if (x.numel() > 0) {
    run_kernel(x, op, p, cpu::norm_modulate, SGLD_CUDA_LAUNCHER(norm_modulate));
  }
}

// residual_out = residual + gate * x;  out = norm(residual_out) * (1 + scale) + shift
void gated_residual_norm_modulate_out(
    at::Tensor& residual_out, at::Tensor& out, const at::Tensor& residual, const at::Tensor& x,
    const std::optional<at::Tensor>& gate, const at::Tensor& scale, const at::Tensor& shift,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias, double eps,
    c10::string_view norm_type) {
  constexpr const char* op = "gated_residual_norm_modulate";
  check_x(residual, op, "residual");
  check_like_x(x, residual, op, "x");
  check_like_x(residual_out, residual, op, "residual_out");
  std::optional<at::Tensor> weight32, bias32;
  sgld::NormModulateParams p =
      norm_params(residual, out, scale, shift, weight, bias, eps, norm_type, op, weight32, bias32);
  if (gate.has_value()) {
    TORCH_CHECK(gate->scalar_type() == scale.scalar_type(), op,
                ": gate must have scale's dtype ", scale.scalar_type(), ", got ",
                gate->scalar_type());
    p.gate = modulation(*gate, residual, op, "gate");
  }
  p.x = x.data_ptr();
  p.residual = residual.data_ptr();
  p.residual_out = residual_out.data_ptr();
  if (x.numel() > 0) {
    run_kernel(x, op, p, cpu::norm_modulate, SGLD_CUDA_LAUNCHER(norm_modulate));
  }
}

// ---- attention, rope, qk_norm, gelu_tanh, permute_rows ----------------------------------------

// q, k, v, out: [B, S, H, D] with D contiguous.
void check_bshd(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.dim() == 4, op, ": ", name, " must be 4-D [B, S, H, D], got shape ", t.sizes());
  TORCH_CHECK(is_kernel_dtype(t.scalar_type()), op, ": ", name,
              " must be float32, bfloat16 or float16, got ", t.scalar_type());
  TORCH_CHECK(t.size(3) > 0, op, ": ", name, " must have D > 0, got shape ", t.sizes());
  TORCH_CHECK(t.stride(3) == 1 || t.size(3) == 1, op, ": ", name,
              " must be contiguous in its last dim (D), got stride ", t.stride(3));
}

// The checks and struct of attention (and of the ops built on it).
sgld::AttentionParams attention_params(at::Tensor& out, at::Tensor& lse, const at::Tensor& q,
                                       const at::Tensor& k, const at::Tensor& v, double scale,
                                       const char* op) {
  for (const auto& [t, name] : {std::pair{&q, "q"}, std::pair{&k, "k"}, std::pair{&v, "v"},
                                std::pair<const at::Tensor*, const char*>{&out, "out"}}) {
    check_bshd(*t, op, name);
    check_device(*t, q, op, name);
  }
  check_device(lse, q, op, "lse");
  TORCH_CHECK(k.sizes() == v.sizes(), op, ": k and v must have one shape, got ", k.sizes(), " and ",
              v.sizes());
  TORCH_CHECK(k.size(0) == q.size(0) && k.size(2) == q.size(2) && k.size(3) == q.size(3), op,
              ": k's B, H, D must match q's ", q.sizes(), ", got ", k.sizes());
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(), op,
              ": q, k, v must share one dtype, got ", q.scalar_type(), ", ", k.scalar_type(), ", ",
              v.scalar_type());
  TORCH_CHECK(out.sizes() == q.sizes(), op, ": out must have q's shape ", q.sizes(), ", got ",
              out.sizes());
  TORCH_CHECK(out.scalar_type() == q.scalar_type(), op, ": out must have q's dtype ",
              q.scalar_type(), ", got ", out.scalar_type());
  TORCH_CHECK(lse.scalar_type() == at::kFloat, op, ": lse must be float32, got ", lse.scalar_type());
  TORCH_CHECK(lse.dim() == 3 && lse.size(0) == q.size(0) && lse.size(1) == q.size(2) &&
                  lse.size(2) == q.size(1),
              op, ": lse must be [B, H, Sq] = [", q.size(0), ", ", q.size(2), ", ", q.size(1),
              "], got ", lse.sizes());
  TORCH_CHECK(lse.is_contiguous(), op, ": lse must be contiguous");
  TORCH_CHECK(std::isfinite(scale), op, ": scale must be finite, got ", scale);
#ifdef SGLD_WITH_CUDA
  if (q.is_cuda()) {
    TORCH_CHECK(q.size(3) <= cuda::kAttentionMaxHeadDim, op, ": the CUDA kernel takes head dims <= ",
                cuda::kAttentionMaxHeadDim, ", got ", q.size(3));
    TORCH_CHECK(q.size(1) < (int64_t{1} << 31) && k.size(1) < (int64_t{1} << 31), op,
                ": sequence lengths must be < 2^31");
  }
#endif

  sgld::AttentionParams p;
  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  p.out = out.data_ptr();
  p.lse = lse.data_ptr<float>();
  p.q_stride_b = q.stride(0), p.q_stride_s = q.stride(1), p.q_stride_h = q.stride(2);
  p.k_stride_b = k.stride(0), p.k_stride_s = k.stride(1), p.k_stride_h = k.stride(2);
  p.v_stride_b = v.stride(0), p.v_stride_s = v.stride(1), p.v_stride_h = v.stride(2);
  p.out_stride_b = out.stride(0), p.out_stride_s = out.stride(1), p.out_stride_h = out.stride(2);
  p.batch = q.size(0);
  p.seq_q = q.size(1);
  p.seq_k = k.size(1);
  p.heads = q.size(2);
  p.head_dim = q.size(3);
  p.scale = static_cast<float>(scale);
  p.dtype = dtype_of(q.scalar_type());
  return p;
}

// out = softmax(scale * q k^T) v and lse = logsumexp(scale * q k^T), per batch and head; the
// kernels read every storage dtype as it is and accumulate in fp32.
void attention_out(at::Tensor& out, at::Tensor& lse, const at::Tensor& q, const at::Tensor& k,
                   const at::Tensor& v, double scale) {
  const sgld::AttentionParams p = attention_params(out, lse, q, k, v, scale, "attention");
  if (q.numel() == 0) {
    return;
  }
  if (k.size(1) == 0) {  // no keys: an empty sum
    out.zero_();
    lse.fill_(-std::numeric_limits<float>::infinity());
    return;
  }
  run_kernel(q, "attention", p, cpu::attention, SGLD_CUDA_LAUNCHER(attention));
}

// Sliding tile attention (CPU only): attention's checks, plus the query groups [G, 2] and their
// key runs [H, G, R, 2] (int64, contiguous, inside the sequence; ops/sliding_tile_attention.py
// makes them).
void sliding_tile_attention_out(at::Tensor& out, at::Tensor& lse, const at::Tensor& q,
                                const at::Tensor& k, const at::Tensor& v, const at::Tensor& q_groups,
                                const at::Tensor& kv_ranges, double scale) {
  constexpr const char* op = "sliding_tile_attention";
  sgld::SlidingTileAttentionParams p;
  p.attn = attention_params(out, lse, q, k, v, scale, op);
  TORCH_CHECK(q.device().is_cpu(), op, ": the _C kernel runs on the CPU only, got tensors on ", q.device());
  TORCH_CHECK(k.size(1) == q.size(1), op, ": q and k must have one sequence length, got ", q.size(1),
              " and ", k.size(1));
  for (const auto& [t, name] : {std::pair{&q_groups, "q_groups"}, std::pair{&kv_ranges, "kv_ranges"}}) {
    check_device(*t, q, op, name);
    TORCH_CHECK(t->scalar_type() == at::kLong && t->is_contiguous(), op, ": ", name,
                " must be contiguous int64, got ", t->scalar_type());
  }
  TORCH_CHECK(q_groups.dim() == 2 && q_groups.size(1) == 2, op, ": q_groups must be [G, 2], got ",
              q_groups.sizes());
  TORCH_CHECK(kv_ranges.dim() == 4 && kv_ranges.size(0) == q.size(2) &&
                  kv_ranges.size(1) == q_groups.size(0) && kv_ranges.size(3) == 2,
              op, ": kv_ranges must be [H, G, R, 2] = [", q.size(2), ", ", q_groups.size(0),
              ", R, 2], got ", kv_ranges.sizes());
  const int64_t seq = q.size(1);
  p.q_groups = q_groups.data_ptr<int64_t>();
  p.kv_ranges = kv_ranges.data_ptr<int64_t>();
  p.groups = q_groups.size(0);
  p.runs = kv_ranges.size(2);
  const auto inside = [&](const int64_t* r) { return 0 <= r[0] && r[0] <= r[1] && r[1] <= seq; };
  for (int64_t g = 0; g < p.groups; ++g) {
    TORCH_CHECK(inside(p.q_groups + 2 * g), op, ": query group ", g, " [", p.q_groups[2 * g], ", ",
                p.q_groups[2 * g + 1], ") is not inside [0, ", seq, ")");
  }
  for (int64_t i = 0; i < kv_ranges.numel() / 2; ++i) {
    TORCH_CHECK(inside(p.kv_ranges + 2 * i), op, ": key run [", p.kv_ranges[2 * i], ", ",
                p.kv_ranges[2 * i + 1], ") is not inside [0, ", seq, ")");
  }
  if (q.numel() == 0) {
    return;
  }
  // Queries outside every group (ops/ leaves none) are defined too.
  out.zero_();
  lse.fill_(-std::numeric_limits<float>::infinity());
  cpu::sliding_tile_attention(p, cpu::active_isa());
}

// q_out, k_out = q, k rotated by (cos, sin) [S, D/2] per token.
void rope_out(at::Tensor& q_out, at::Tensor& k_out, const at::Tensor& q, const at::Tensor& k,
              const at::Tensor& cos, const at::Tensor& sin, bool interleaved) {
  constexpr const char* op = "rope";
  check_bshd(q, op, "q");
  check_bshd(k, op, "k");
  check_device(k, q, op, "k");
  TORCH_CHECK(q.is_contiguous() && k.is_contiguous(), op, ": q and k must be contiguous");
  TORCH_CHECK(k.scalar_type() == q.scalar_type(), op, ": k must have q's dtype ", q.scalar_type(),
              ", got ", k.scalar_type());
  TORCH_CHECK(k.size(0) == q.size(0) && k.size(1) == q.size(1) && k.size(3) == q.size(3), op,
              ": k's B, S, D must match q's ", q.sizes(), ", got ", k.sizes());
  TORCH_CHECK(q.size(3) % 2 == 0, op, ": head dim D must be even, got ", q.size(3));
  check_like_x(q_out, q, op, "q_out");
  check_like_x(k_out, k, op, "k_out");
  for (const auto& [t, name] : {std::pair{&cos, "cos"}, std::pair{&sin, "sin"}}) {
    check_device(*t, q, op, name);
    TORCH_CHECK(t->scalar_type() == at::kFloat, op, ": ", name, " must be float32, got ",
                t->scalar_type());
    TORCH_CHECK(t->dim() == 2 && t->size(0) == q.size(1) && t->size(1) == q.size(3) / 2, op, ": ",
                name, " must be [S, D/2] = [", q.size(1), ", ", q.size(3) / 2, "], got ", t->sizes());
    TORCH_CHECK(t->is_contiguous(), op, ": ", name, " must be contiguous");
  }
  if (q.numel() == 0 && k.numel() == 0) {
    return;
  }
  sgld::RopeParams p;
  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.q_out = q_out.data_ptr();
  p.k_out = k_out.data_ptr();
  p.cos = cos.data_ptr<float>();
  p.sin = sin.data_ptr<float>();
  p.batch = q.size(0);
  p.seq_len = q.size(1);
  p.heads_q = q.size(2);
  p.heads_k = k.size(2);
  p.head_dim = q.size(3);
  p.interleaved = interleaved;
  p.dtype = dtype_of(q.scalar_type());
  run_kernel(q, op, p, cpu::rope, SGLD_CUDA_LAUNCHER(rope));
}

// out = x / rms(x) * weight over rows of H*D (across_heads) or of D values.
void qk_rms_norm_out(at::Tensor& out, const at::Tensor& x, const std::optional<at::Tensor>& weight,
                     double eps, bool across_heads) {
  constexpr const char* op = "qk_rms_norm";
  check_bshd(x, op, "x");
  TORCH_CHECK(x.is_contiguous(), op, ": x must be contiguous");
  check_like_x(out, x, op, "out");
  check_eps(eps, op);
  const int64_t width = across_heads ? x.size(2) * x.size(3) : x.size(3);
  const auto weight32 = affine(weight, x, width, across_heads ? "H*D" : "D", op, "weight");
  if (x.numel() == 0) {
    return;
  }
  sgld::RmsRowsParams p;
  p.x = x.data_ptr();
  p.out = out.data_ptr();
  p.weight = data_or_null(weight32);
  p.rows = x.numel() / width;
  p.width = width;
  p.eps = static_cast<float>(eps);
  p.dtype = dtype_of(x.scalar_type());
  run_kernel(x, op, p, cpu::rms_rows, SGLD_CUDA_LAUNCHER(rms_rows));
}

// out = gelu_tanh(x), elementwise; x: any shape, treated as a flat buffer; out may be x itself
// (in place), not a part of it.
void gelu_tanh_out(at::Tensor& out, const at::Tensor& x) {
  constexpr const char* op = "gelu_tanh";
  TORCH_CHECK(is_kernel_dtype(x.scalar_type()), op, ": x must be float32, bfloat16 or float16, got ",
              x.scalar_type());
  TORCH_CHECK(x.is_contiguous(), op, ": x must be contiguous");
  check_like_x(out, x, op, "out");
  TORCH_CHECK(at::get_overlap_status(out, x) != at::MemOverlapStatus::Partial, op,
              ": out must be x itself or not overlap it");
  if (x.numel() == 0) {
    return;
  }
  sgld::GeluTanhParams p;
  p.x = x.data_ptr();
  p.out = out.data_ptr();
  p.n = x.numel();
  p.dtype = dtype_of(x.scalar_type());
  run_kernel(x, op, p, cpu::gelu_tanh, SGLD_CUDA_LAUNCHER(gelu_tanh));
}

// out (contiguous) = src, a strided view of the same shape whose last dim is contiguous.
void permute_rows_out(at::Tensor& out, const at::Tensor& src) {
  constexpr const char* op = "permute_rows";
  check_device(out, src, op, "out");
  TORCH_CHECK(out.sizes() == src.sizes(), op, ": out must have src's shape ", src.sizes(), ", got ",
              out.sizes());
  TORCH_CHECK(out.scalar_type() == src.scalar_type(), op, ": out must have src's dtype ",
              src.scalar_type(), ", got ", out.scalar_type());
  TORCH_CHECK(out.is_contiguous(), op, ": out must be contiguous");
  TORCH_CHECK(src.dim() >= 1 && src.dim() <= sgld::kPermuteMaxDims + 1, op, ": src must have 1 to ",
              sgld::kPermuteMaxDims + 1, " dims, got ", src.dim());
  TORCH_CHECK(src.stride(-1) == 1 || src.size(-1) == 1, op,
              ": src must be contiguous in its last dim, got stride ", src.stride(-1));
  if (src.numel() == 0) {
    return;
  }
  sgld::PermuteRowsParams p;
  p.src = src.data_ptr();
  p.out = out.data_ptr();
  p.ndim = static_cast<int>(src.dim() - 1);
  for (int i = 0; i < p.ndim; ++i) {
    p.sizes[i] = src.size(i);
    p.src_strides[i] = src.stride(i);
  }
  p.rows = src.numel() / src.size(-1);
  p.row_len = src.size(-1);
  p.elem_size = src.element_size();
  // No ISA builds: a row's memcpy is as wide as the machine allows.
  run_kernel(src, op, p, [](const sgld::PermuteRowsParams& q, cpu::Isa) { cpu::permute_rows(q); },
             SGLD_CUDA_LAUNCHER(permute_rows));
}

bool with_cuda() {
#ifdef SGLD_WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace

TORCH_LIBRARY(sglang_diffusion_C, m) {
  m.def(
      "norm_modulate_out(Tensor(a!) out, Tensor x, Tensor scale, Tensor shift, "
      "Tensor? weight, Tensor? bias, float eps, str norm_type) -> ()");
  m.def(
      "gated_residual_norm_modulate_out(Tensor(a!) residual_out, Tensor(b!) out, "
      "Tensor residual, Tensor x, Tensor? gate, Tensor scale, Tensor shift, Tensor? weight, "
      "Tensor? bias, float eps, str norm_type) -> ()");
  m.def(
      "attention_out(Tensor(a!) out, Tensor(b!) lse, Tensor q, Tensor k, Tensor v, float scale) "
      "-> ()");
  m.def(
      "rope_out(Tensor(a!) q_out, Tensor(b!) k_out, Tensor q, Tensor k, Tensor cos, Tensor sin, "
      "bool interleaved) -> ()");
  m.def(
      "qk_rms_norm_out(Tensor(a!) out, Tensor x, Tensor? weight, float eps, bool across_heads) "
      "-> ()");
  m.def(
      "sliding_tile_attention_out(Tensor(a!) out, Tensor(b!) lse, Tensor q, Tensor k, Tensor v, "
      "Tensor q_groups, Tensor kv_ranges, float scale) -> ()");
  m.def("gelu_tanh_out(Tensor(a!) out, Tensor x) -> ()");
  m.def("permute_rows_out(Tensor(a!) out, Tensor src) -> ()");
  // Which CPU build the kernels run ("default", "avx2" or "avx512"), for the dispatch log.
  m.def("cpu_isa() -> str", &cpu_isa_name);
  // The CPU builds this CPU can run (SGLD_CPU_ISA forces one of them).
  m.def("cpu_isas() -> str[]", &cpu_isa_names);
  // Whether csrc/cuda was built in (the CUDA kernels are registered for the same ops).
  m.def("with_cuda() -> bool", &with_cuda);
}

// One function per op, for the CPU and (when built with it) the CUDA dispatch key.
#define SGLD_IMPL_OPS(m)                                                              \
  m.impl("norm_modulate_out", &norm_modulate_out);                                    \
  m.impl("gated_residual_norm_modulate_out", &gated_residual_norm_modulate_out);      \
  m.impl("attention_out", &attention_out);                                            \
  m.impl("rope_out", &rope_out);                                                      \
  m.impl("qk_rms_norm_out", &qk_rms_norm_out);                                        \
  m.impl("gelu_tanh_out", &gelu_tanh_out);                                            \
  m.impl("permute_rows_out", &permute_rows_out)

TORCH_LIBRARY_IMPL(sglang_diffusion_C, CPU, m) {
  SGLD_IMPL_OPS(m);
  m.impl("sliding_tile_attention_out", &sliding_tile_attention_out);  // no CUDA kernel: Triton serves CUDA
}

#ifdef SGLD_WITH_CUDA
TORCH_LIBRARY_IMPL(sglang_diffusion_C, CUDA, m) {
  SGLD_IMPL_OPS(m);
}
#endif

// `import sglang_diffusion._C` loads this library, which registers the ops above with torch;
// the Python module itself is empty.
PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C",
                               "Native kernels, registered as torch.ops.sglang_diffusion_C.",
                               -1, nullptr};
  return PyModule_Create(&module);
}
