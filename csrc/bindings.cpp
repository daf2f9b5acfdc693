// torch.ops.sglang_diffusion_C: the only C++ that sees a tensor. Every condition a kernel
// relies on is checked here, one message per condition; kernels get a plain params struct.
// The ops write into caller-given outputs; sglang_diffusion/ops/ wraps them as functional
// torch.library custom ops with fake implementations.
#include <Python.h>

#include <ATen/MemoryOverlap.h>
#include <ATen/Version.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/string_view.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <utility>
#include <optional>
#include <string>

#include "cpu/activation.h"
#include "cpu/all_to_all.h"
#include "cpu/attention.h"
#include "cpu/isa.h"
#include "cpu/norm.h"
#include "cpu/qk_norm.h"
#include "cpu/rope.h"

#ifdef SGLD_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "cuda/activation.h"
#include "cuda/all_to_all.h"
#include "cuda/attention.h"
#include "cuda/norm.h"
#include "cuda/qk_norm.h"
#include "cuda/rope.h"
#endif

namespace {

namespace cpu = sglang_diffusion::cpu;
#ifdef SGLD_WITH_CUDA
namespace cuda = sglang_diffusion::cuda;
#endif

// Follows torch's own choice ("NO AVX", "AVX2", "AVX512", ...), so ATEN_CPU_CAPABILITY=default
// selects our portable build too.
cpu::Isa cpu_isa() {
  const std::string torch_isa = at::get_cpu_capability();
  const bool avx2 = torch_isa == "AVX2" || torch_isa == "AVX512";
  return avx2 && SGLD_CPU_HAVE_AVX2_BUILD ? cpu::Isa::kAvx2 : cpu::Isa::kDefault;
}

std::string cpu_isa_name() {
  return cpu::isa_name(cpu_isa());
}

bool is_kernel_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kBFloat16 || t == at::kHalf;
}

cpu::DType kernel_dtype(at::ScalarType t) {
  switch (t) {
    case at::kBFloat16:
      return cpu::DType::kBFloat16;
    case at::kHalf:
      return cpu::DType::kFloat16;
    default:
      return cpu::DType::kFloat32;
  }
}

// Every tensor of a CPU kernel is on the CPU, and of a CUDA kernel on CUDA (the dispatcher
// picks the kernel by the inputs' devices; this catches a mixed call). A CUDA kernel's
// tensors are also on one device: its launcher's helpers check that against x.
void check_device(const at::Tensor& t, const char* op, const char* name,
                  c10::DeviceType dev = c10::kCPU) {
  TORCH_CHECK(t.device().type() == dev, op, ": ", name, " must be a ",
              dev == c10::kCPU ? "CPU" : "CUDA", " tensor, got one on ", t.device());
}

void check_x(const at::Tensor& x, const char* op, const char* name,
             c10::DeviceType dev = c10::kCPU) {
  check_device(x, op, name, dev);
  TORCH_CHECK(x.dim() == 3, op, ": ", name, " must be 3-D [B, S, D], got shape ", x.sizes());
  TORCH_CHECK(is_kernel_dtype(x.scalar_type()), op, ": ", name,
              " must be float32, bfloat16 or float16, got ", x.scalar_type());
  TORCH_CHECK(x.size(2) > 0, op, ": ", name, " must have D > 0, got shape ", x.sizes());
  TORCH_CHECK(x.is_contiguous(), op, ": ", name, " must be contiguous");
}

// An activation-shaped tensor (out, residual, ...): like `x` in shape, dtype and layout.
void check_like_x(const at::Tensor& t, const at::Tensor& x, const char* op, const char* name) {
  check_device(t, op, name, x.device().type());
  TORCH_CHECK(t.device() == x.device(), op, ": ", name, " must be on x's device ", x.device(),
              ", got ", t.device());
  TORCH_CHECK(t.sizes() == x.sizes(), op, ": ", name, " must have x's shape ", x.sizes(),
              ", got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), op, ": ", name, " must have x's dtype ",
              x.scalar_type(), ", got ", t.scalar_type());
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous");
}

// scale, shift, gate: [D], [B, 1, D], [B, S, D] or any shape that broadcasts to x's.
cpu::ModParam modulation(const at::Tensor& t, const at::Tensor& x, const char* op,
                         const char* name) {
  check_device(t, op, name, x.device().type());
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

// weight, bias: [D], any float dtype; returned as contiguous float32 (D values, cheap).
std::optional<at::Tensor> affine(const std::optional<at::Tensor>& t, const at::Tensor& x,
                                 const char* op, const char* name) {
  if (!t.has_value()) {
    return std::nullopt;
  }
  check_device(*t, op, name, x.device().type());
  TORCH_CHECK(t->dim() == 1 && t->size(0) == x.size(2), op, ": ", name, " must be [D] = [",
              x.size(2), "], got shape ", t->sizes());
  TORCH_CHECK(at::isFloatingType(t->scalar_type()), op, ": ", name,
              " must be a floating-point tensor, got ", t->scalar_type());
  return t->to(at::kFloat).contiguous();
}

const float* data_or_null(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->data_ptr<float>() : nullptr;
}

// Fills everything but the gated-variant fields.
cpu::NormModulateParams common_params(
    const at::Tensor& x, const at::Tensor& out, const at::Tensor& scale,
    const at::Tensor& shift, const std::optional<at::Tensor>& weight32,
    const std::optional<at::Tensor>& bias32, double eps, c10::string_view norm_type,
    const char* op) {
  TORCH_CHECK(norm_type == "layer" || norm_type == "rms", op,
              ": norm_type must be 'layer' or 'rms', got '", std::string(norm_type), "'");
  TORCH_CHECK(std::isfinite(eps) && eps >= 0, op, ": eps must be finite and >= 0, got ", eps);
  const at::ScalarType mod_dtype = scale.scalar_type();
  TORCH_CHECK(mod_dtype == x.scalar_type() || mod_dtype == at::kFloat, op,
              ": scale must have x's dtype (", x.scalar_type(), ") or float32, got ", mod_dtype);
  TORCH_CHECK(shift.scalar_type() == mod_dtype, op, ": shift must have scale's dtype ",
              mod_dtype, ", got ", shift.scalar_type());

  cpu::NormModulateParams p;
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
  p.dtype = kernel_dtype(x.scalar_type());
  p.mod_dtype = kernel_dtype(mod_dtype);
  return p;
}

// out = norm(x) * (1 + scale) + shift
void norm_modulate_out(at::Tensor& out, const at::Tensor& x, const at::Tensor& scale,
                       const at::Tensor& shift, const std::optional<at::Tensor>& weight,
                       const std::optional<at::Tensor>& bias, double eps,
                       c10::string_view norm_type) {
  constexpr const char* op = "norm_modulate";
  check_x(x, op, "x");
  check_like_x(out, x, op, "out");
  const auto weight32 = affine(weight, x, op, "weight");
  const auto bias32 = affine(bias, x, op, "bias");
  const cpu::NormModulateParams p =
      common_params(x, out, scale, shift, weight32, bias32, eps, norm_type, op);
  if (x.numel() > 0) {
    cpu::norm_modulate(p, cpu_isa());
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
  check_like_x(out, residual, op, "out");
  check_like_x(residual_out, residual, op, "residual_out");
  const auto weight32 = affine(weight, residual, op, "weight");
  const auto bias32 = affine(bias, residual, op, "bias");
  cpu::NormModulateParams p =
      common_params(residual, out, scale, shift, weight32, bias32, eps, norm_type, op);
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
    cpu::norm_modulate(p, cpu_isa());
  }
}

// ---- attention, rope, qk_norm, gelu_tanh, permute_rows ----------------------------------------
// Each op: one function checking every condition (for the CPU or the CUDA kernel alike), then
// one per device filling that device's params struct.

cpu::ActDType act_dtype(at::ScalarType t) {
  switch (t) {
    case at::kBFloat16:
      return cpu::ActDType::kBFloat16;
    case at::kHalf:
      return cpu::ActDType::kFloat16;
    default:
      return cpu::ActDType::kFloat32;
  }
}

// q, k, v, out: [B, S, H, D] with D contiguous.
void check_bshd(const at::Tensor& t, const char* op, const char* name,
                c10::DeviceType dev = c10::kCPU) {
  check_device(t, op, name, dev);
  TORCH_CHECK(t.dim() == 4, op, ": ", name, " must be 4-D [B, S, H, D], got shape ", t.sizes());
  TORCH_CHECK(is_kernel_dtype(t.scalar_type()), op, ": ", name,
              " must be float32, bfloat16 or float16, got ", t.scalar_type());
  TORCH_CHECK(t.size(3) > 0, op, ": ", name, " must have D > 0, got shape ", t.sizes());
  TORCH_CHECK(t.stride(3) == 1 || t.size(3) == 1, op, ": ", name,
              " must be contiguous in its last dim (D), got stride ", t.stride(3));
}

void check_attention(const at::Tensor& out, const at::Tensor& lse, const at::Tensor& q,
                     const at::Tensor& k, const at::Tensor& v, double scale, c10::DeviceType dev) {
  constexpr const char* op = "attention";
  check_bshd(q, op, "q", dev);
  check_bshd(k, op, "k", dev);
  check_bshd(v, op, "v", dev);
  check_bshd(out, op, "out", dev);
  for (const at::Tensor* t : {&k, &v, &out, &lse}) {
    TORCH_CHECK(t->device() == q.device(), op, ": every tensor must be on q's device ", q.device(),
                ", got one on ", t->device());
  }
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
}

// Fills the strides and sizes both devices' structs share.
template <typename Params>
void fill_attention_shape(Params& p, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                          const at::Tensor& out) {
  p.q_stride_b = q.stride(0), p.q_stride_s = q.stride(1), p.q_stride_h = q.stride(2);
  p.k_stride_b = k.stride(0), p.k_stride_s = k.stride(1), p.k_stride_h = k.stride(2);
  p.v_stride_b = v.stride(0), p.v_stride_s = v.stride(1), p.v_stride_h = v.stride(2);
  p.out_stride_b = out.stride(0), p.out_stride_s = out.stride(1), p.out_stride_h = out.stride(2);
  p.batch = q.size(0);
  p.seq_q = q.size(1);
  p.seq_k = k.size(1);
  p.heads = q.size(2);
  p.head_dim = q.size(3);
}

// out = softmax(scale * q k^T) v and lse = logsumexp(scale * q k^T), per batch and head.
void attention_out(at::Tensor& out, at::Tensor& lse, const at::Tensor& q, const at::Tensor& k,
                   const at::Tensor& v, double scale) {
  check_attention(out, lse, q, k, v, scale, c10::kCPU);
  if (q.numel() == 0) {
    return;
  }
  if (k.size(1) == 0) {  // no keys: an empty sum
    out.zero_();
    lse.fill_(-std::numeric_limits<float>::infinity());
    return;
  }
  // The kernel is fp32: 16-bit inputs are widened once here (the CPU has no 16-bit FMA).
  const bool fp32 = q.scalar_type() == at::kFloat;
  const at::Tensor q32 = fp32 ? q : q.to(at::kFloat);
  const at::Tensor k32 = fp32 ? k : k.to(at::kFloat);
  const at::Tensor v32 = fp32 ? v : v.to(at::kFloat);
  at::Tensor out32 = fp32 ? out : at::empty(q.sizes(), q.options().dtype(at::kFloat));

  cpu::AttentionParams p;
  p.q = q32.data_ptr<float>();
  p.k = k32.data_ptr<float>();
  p.v = v32.data_ptr<float>();
  p.out = out32.data_ptr<float>();
  p.lse = lse.data_ptr<float>();
  fill_attention_shape(p, q32, k32, v32, out32);
  p.scale = static_cast<float>(scale);
  cpu::attention(p, cpu_isa());
  if (!fp32) {
    out.copy_(out32);
  }
}

void check_rope(const at::Tensor& q_out, const at::Tensor& k_out, const at::Tensor& q,
                const at::Tensor& k, const at::Tensor& cos, const at::Tensor& sin,
                c10::DeviceType dev) {
  constexpr const char* op = "rope";
  check_bshd(q, op, "q", dev);
  check_bshd(k, op, "k", dev);
  TORCH_CHECK(q.is_contiguous() && k.is_contiguous(), op, ": q and k must be contiguous");
  TORCH_CHECK(k.scalar_type() == q.scalar_type(), op, ": k must have q's dtype ", q.scalar_type(),
              ", got ", k.scalar_type());
  TORCH_CHECK(k.size(0) == q.size(0) && k.size(1) == q.size(1) && k.size(3) == q.size(3), op,
              ": k's B, S, D must match q's ", q.sizes(), ", got ", k.sizes());
  TORCH_CHECK(q.size(3) % 2 == 0, op, ": head dim D must be even, got ", q.size(3));
  TORCH_CHECK(k.device() == q.device(), op, ": k must be on q's device ", q.device(), ", got ",
              k.device());
  check_like_x(q_out, q, op, "q_out");
  check_like_x(k_out, k, op, "k_out");
  for (const auto& [t, name] : {std::pair{&cos, "cos"}, std::pair{&sin, "sin"}}) {
    check_device(*t, op, name, dev);
    TORCH_CHECK(t->device() == q.device(), op, ": ", name, " must be on q's device ", q.device());
    TORCH_CHECK(t->scalar_type() == at::kFloat, op, ": ", name, " must be float32, got ",
                t->scalar_type());
    TORCH_CHECK(t->dim() == 2 && t->size(0) == q.size(1) && t->size(1) == q.size(3) / 2, op, ": ",
                name, " must be [S, D/2] = [", q.size(1), ", ", q.size(3) / 2, "], got ", t->sizes());
    TORCH_CHECK(t->is_contiguous(), op, ": ", name, " must be contiguous");
  }
}

// q_out, k_out = q, k rotated by (cos, sin) [S, D/2] per token.
void rope_out(at::Tensor& q_out, at::Tensor& k_out, const at::Tensor& q, const at::Tensor& k,
              const at::Tensor& cos, const at::Tensor& sin, bool interleaved) {
  check_rope(q_out, k_out, q, k, cos, sin, c10::kCPU);
  if (q.numel() == 0 && k.numel() == 0) {
    return;
  }
  cpu::RopeParams p;
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
  p.dtype = act_dtype(q.scalar_type());
  cpu::rope(p, cpu_isa());
}

// The row width, and the weight as contiguous float32 (or none).
std::pair<int64_t, std::optional<at::Tensor>> check_qk_rms_norm(
    const at::Tensor& out, const at::Tensor& x, const std::optional<at::Tensor>& weight, double eps,
    bool across_heads, c10::DeviceType dev) {
  constexpr const char* op = "qk_rms_norm";
  check_bshd(x, op, "x", dev);
  TORCH_CHECK(x.is_contiguous(), op, ": x must be contiguous");
  check_like_x(out, x, op, "out");
  TORCH_CHECK(std::isfinite(eps) && eps >= 0, op, ": eps must be finite and >= 0, got ", eps);
  const int64_t width = across_heads ? x.size(2) * x.size(3) : x.size(3);
  std::optional<at::Tensor> weight32;
  if (weight.has_value()) {
    check_device(*weight, op, "weight", dev);
    TORCH_CHECK(weight->device() == x.device(), op, ": weight must be on x's device ", x.device());
    TORCH_CHECK(weight->dim() == 1 && weight->size(0) == width, op, ": weight must be [",
                across_heads ? "H*D" : "D", "] = [", width, "], got shape ", weight->sizes());
    TORCH_CHECK(at::isFloatingType(weight->scalar_type()), op,
                ": weight must be a floating-point tensor, got ", weight->scalar_type());
    weight32 = weight->to(at::kFloat).contiguous();
  }
  return {width, weight32};
}

// out = x / rms(x) * weight over rows of H*D (across_heads) or of D values.
void qk_rms_norm_out(at::Tensor& out, const at::Tensor& x, const std::optional<at::Tensor>& weight,
                     double eps, bool across_heads) {
  const auto [width, weight32] = check_qk_rms_norm(out, x, weight, eps, across_heads, c10::kCPU);
  if (x.numel() == 0) {
    return;
  }
  cpu::RmsRowsParams p;
  p.x = x.data_ptr();
  p.out = out.data_ptr();
  p.weight = data_or_null(weight32);
  p.rows = x.numel() / width;
  p.width = width;
  p.eps = static_cast<float>(eps);
  p.dtype = act_dtype(x.scalar_type());
  cpu::rms_rows(p, cpu_isa());
}

// x: any shape, treated as a flat buffer; out may be x itself (in place), not a part of it.
void check_gelu_tanh(const at::Tensor& out, const at::Tensor& x, c10::DeviceType dev) {
  constexpr const char* op = "gelu_tanh";
  check_device(x, op, "x", dev);
  TORCH_CHECK(is_kernel_dtype(x.scalar_type()), op, ": x must be float32, bfloat16 or float16, got ",
              x.scalar_type());
  TORCH_CHECK(x.is_contiguous(), op, ": x must be contiguous");
  check_like_x(out, x, op, "out");
  TORCH_CHECK(at::get_overlap_status(out, x) != at::MemOverlapStatus::Partial, op,
              ": out must be x itself or not overlap it");
}

// out = gelu_tanh(x), elementwise.
void gelu_tanh_out(at::Tensor& out, const at::Tensor& x) {
  check_gelu_tanh(out, x, c10::kCPU);
  if (x.numel() == 0) {
    return;
  }
  cpu::GeluTanhParams p;
  p.x = x.data_ptr();
  p.out = out.data_ptr();
  p.n = x.numel();
  p.dtype = act_dtype(x.scalar_type());
  cpu::gelu_tanh(p, cpu_isa());
}

void check_permute_rows(const at::Tensor& out, const at::Tensor& src, c10::DeviceType dev) {
  constexpr const char* op = "permute_rows";
  check_device(src, op, "src", dev);
  check_device(out, op, "out", dev);
  TORCH_CHECK(out.device() == src.device(), op, ": out must be on src's device ", src.device());
  TORCH_CHECK(out.sizes() == src.sizes(), op, ": out must have src's shape ", src.sizes(), ", got ",
              out.sizes());
  TORCH_CHECK(out.scalar_type() == src.scalar_type(), op, ": out must have src's dtype ",
              src.scalar_type(), ", got ", out.scalar_type());
  TORCH_CHECK(out.is_contiguous(), op, ": out must be contiguous");
  TORCH_CHECK(src.dim() >= 1 && src.dim() <= cpu::kPermuteMaxDims + 1, op, ": src must have 1 to ",
              cpu::kPermuteMaxDims + 1, " dims, got ", src.dim());
  TORCH_CHECK(src.stride(-1) == 1 || src.size(-1) == 1, op,
              ": src must be contiguous in its last dim, got stride ", src.stride(-1));
}

template <typename Params>
void fill_permute_rows(Params& p, at::Tensor& out, const at::Tensor& src) {
  p.src = src.data_ptr();
  p.out = out.data_ptr();
  p.ndim = static_cast<int>(src.dim() - 1);
  for (int i = 0; i < p.ndim; ++i) {
    p.sizes[i] = src.size(i);
    p.src_strides[i] = src.stride(i);
  }
  p.row_len = src.size(-1);
  p.elem_size = static_cast<int>(src.element_size());
}

// out (contiguous) = src, a strided view of the same shape whose last dim is contiguous.
void permute_rows_out(at::Tensor& out, const at::Tensor& src) {
  check_permute_rows(out, src, c10::kCPU);
  if (src.numel() == 0) {
    return;
  }
  cpu::PermuteRowsParams p;
  fill_permute_rows(p, out, src);
  cpu::permute_rows(p);
}

#ifdef SGLD_WITH_CUDA
// ---- the CUDA kernels (csrc/cuda): the same checks, the CUDA params structs --------------------

cuda::DType cuda_dtype(at::ScalarType t) {
  switch (t) {
    case at::kBFloat16:
      return cuda::DType::kBFloat16;
    case at::kHalf:
      return cuda::DType::kFloat16;
    default:
      return cuda::DType::kFloat32;
  }
}

void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA kernel launch failed: ", cudaGetErrorString(err));
}

cudaStream_t stream_of(const at::Tensor& t) {
  return at::cuda::getCurrentCUDAStream(t.device().index()).stream();
}

void attention_out_cuda(at::Tensor& out, at::Tensor& lse, const at::Tensor& q, const at::Tensor& k,
                        const at::Tensor& v, double scale) {
  check_attention(out, lse, q, k, v, scale, c10::kCUDA);
  TORCH_CHECK(q.size(3) <= cuda::kAttentionMaxHeadDim, "attention: the CUDA kernel takes head dims <= ",
              cuda::kAttentionMaxHeadDim, ", got ", q.size(3));
  TORCH_CHECK(q.size(1) < (int64_t{1} << 31) && k.size(1) < (int64_t{1} << 31),
              "attention: sequence lengths must be < 2^31");
  if (q.numel() == 0) {
    return;
  }
  if (k.size(1) == 0) {
    out.zero_();
    lse.fill_(-std::numeric_limits<float>::infinity());
    return;
  }
  const c10::cuda::CUDAGuard guard(q.device());
  cuda::AttentionParams p;
  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  p.out = out.data_ptr();
  p.lse = lse.data_ptr<float>();
  fill_attention_shape(p, q, k, v, out);
  p.scale = static_cast<float>(scale);
  p.dtype = cuda_dtype(q.scalar_type());
  check_launch(cuda::attention(p, stream_of(q)), "attention");
}

void rope_out_cuda(at::Tensor& q_out, at::Tensor& k_out, const at::Tensor& q, const at::Tensor& k,
                   const at::Tensor& cos, const at::Tensor& sin, bool interleaved) {
  check_rope(q_out, k_out, q, k, cos, sin, c10::kCUDA);
  const c10::cuda::CUDAGuard guard(q.device());
  cuda::RopeParams p;
  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.q_out = q_out.data_ptr();
  p.k_out = k_out.data_ptr();
  p.cos = cos.data_ptr<float>();
  p.sin = sin.data_ptr<float>();
  p.tokens = q.size(0) * q.size(1);
  p.seq_len = static_cast<int>(q.size(1));
  p.heads_q = static_cast<int>(q.size(2));
  p.heads_k = static_cast<int>(k.size(2));
  p.head_dim = static_cast<int>(q.size(3));
  p.interleaved = interleaved;
  p.dtype = cuda_dtype(q.scalar_type());
  check_launch(cuda::rope(p, stream_of(q)), "rope");
}

void qk_rms_norm_out_cuda(at::Tensor& out, const at::Tensor& x, const std::optional<at::Tensor>& weight,
                          double eps, bool across_heads) {
  const auto [width, weight32] = check_qk_rms_norm(out, x, weight, eps, across_heads, c10::kCUDA);
  const c10::cuda::CUDAGuard guard(x.device());
  cuda::RmsRowsParams p;
  p.x = x.data_ptr();
  p.out = out.data_ptr();
  p.weight = data_or_null(weight32);
  p.rows = width > 0 ? x.numel() / width : 0;
  p.width = static_cast<int>(width);
  p.eps = static_cast<float>(eps);
  p.dtype = cuda_dtype(x.scalar_type());
  check_launch(cuda::rms_rows(p, stream_of(x)), "qk_rms_norm");
}

void gelu_tanh_out_cuda(at::Tensor& out, const at::Tensor& x) {
  check_gelu_tanh(out, x, c10::kCUDA);
  const c10::cuda::CUDAGuard guard(x.device());
  cuda::GeluTanhParams p;
  p.x = x.data_ptr();
  p.out = out.data_ptr();
  p.n = x.numel();
  p.dtype = cuda_dtype(x.scalar_type());
  check_launch(cuda::gelu_tanh(p, stream_of(x)), "gelu_tanh");
}

void permute_rows_out_cuda(at::Tensor& out, const at::Tensor& src) {
  check_permute_rows(out, src, c10::kCUDA);
  const c10::cuda::CUDAGuard guard(src.device());
  cuda::PermuteRowsParams p;
  fill_permute_rows(p, out, src);
  p.rows = src.numel() / std::max<int64_t>(1, src.size(-1));
  check_launch(cuda::permute_rows(p, stream_of(src)), "permute_rows");
}

// The CPU struct (filled by the shared checks) in the CUDA kernel's terms.
cuda::NormModulateParams to_cuda(const cpu::NormModulateParams& c) {
  const auto mod = [](const cpu::ModParam& m) { return cuda::ModParam{m.ptr, m.stride_b, m.stride_s}; };
  const auto dt = [](cpu::DType d) {
    return d == cpu::DType::kBFloat16 ? cuda::DType::kBFloat16
           : d == cpu::DType::kFloat16 ? cuda::DType::kFloat16
                                       : cuda::DType::kFloat32;
  };
  cuda::NormModulateParams p;
  p.x = c.x;
  p.out = c.out;
  p.residual = c.residual;
  p.residual_out = c.residual_out;
  p.gate = mod(c.gate);
  p.scale = mod(c.scale);
  p.shift = mod(c.shift);
  p.weight = c.weight;
  p.bias = c.bias;
  p.batch = c.batch;
  p.seq_len = c.seq_len;
  p.dim = static_cast<int>(c.dim);
  p.eps = c.eps;
  p.rms = c.rms;
  p.dtype = dt(c.dtype);
  p.mod_dtype = dt(c.mod_dtype);
  return p;
}

void norm_modulate_out_cuda(at::Tensor& out, const at::Tensor& x, const at::Tensor& scale,
                            const at::Tensor& shift, const std::optional<at::Tensor>& weight,
                            const std::optional<at::Tensor>& bias, double eps,
                            c10::string_view norm_type) {
  constexpr const char* op = "norm_modulate";
  check_x(x, op, "x", c10::kCUDA);
  check_like_x(out, x, op, "out");
  const auto weight32 = affine(weight, x, op, "weight");
  const auto bias32 = affine(bias, x, op, "bias");
  const cpu::NormModulateParams p =
      common_params(x, out, scale, shift, weight32, bias32, eps, norm_type, op);
  const c10::cuda::CUDAGuard guard(x.device());
  check_launch(cuda::norm_modulate(to_cuda(p), stream_of(x)), op);
}

void gated_residual_norm_modulate_out_cuda(
    at::Tensor& residual_out, at::Tensor& out, const at::Tensor& residual, const at::Tensor& x,
    const std::optional<at::Tensor>& gate, const at::Tensor& scale, const at::Tensor& shift,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias, double eps,
    c10::string_view norm_type) {
  constexpr const char* op = "gated_residual_norm_modulate";
  check_x(residual, op, "residual", c10::kCUDA);
  check_like_x(x, residual, op, "x");
  check_like_x(out, residual, op, "out");
  check_like_x(residual_out, residual, op, "residual_out");
  const auto weight32 = affine(weight, residual, op, "weight");
  const auto bias32 = affine(bias, residual, op, "bias");
  cpu::NormModulateParams p =
      common_params(residual, out, scale, shift, weight32, bias32, eps, norm_type, op);
  if (gate.has_value()) {
    TORCH_CHECK(gate->scalar_type() == scale.scalar_type(), op, ": gate must have scale's dtype ",
                scale.scalar_type(), ", got ", gate->scalar_type());
    p.gate = modulation(*gate, residual, op, "gate");
  }
  p.x = x.data_ptr();
  p.residual = residual.data_ptr();
  p.residual_out = residual_out.data_ptr();
  const c10::cuda::CUDAGuard guard(x.device());
  check_launch(cuda::norm_modulate(to_cuda(p), stream_of(x)), op);
}
#endif  // SGLD_WITH_CUDA

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
  m.def("gelu_tanh_out(Tensor(a!) out, Tensor x) -> ()");
  m.def("permute_rows_out(Tensor(a!) out, Tensor src) -> ()");
  // Which CPU build the kernels run ("avx2" or "default"), for the dispatch log.
  m.def("cpu_isa() -> str", &cpu_isa_name);
  // Whether csrc/cuda was built in (the CUDA kernels are registered for the same ops).
  m.def("with_cuda() -> bool", &with_cuda);
}

TORCH_LIBRARY_IMPL(sglang_diffusion_C, CPU, m) {
  m.impl("norm_modulate_out", &norm_modulate_out);
  m.impl("gated_residual_norm_modulate_out", &gated_residual_norm_modulate_out);
  m.impl("attention_out", &attention_out);
  m.impl("rope_out", &rope_out);
  m.impl("qk_rms_norm_out", &qk_rms_norm_out);
  m.impl("gelu_tanh_out", &gelu_tanh_out);
  m.impl("permute_rows_out", &permute_rows_out);
}

// `import sglang_diffusion._C` loads this library, which registers the ops above with torch;
// the Python module itself is empty.
PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C",
                               "Native kernels, registered as torch.ops.sglang_diffusion_C.",
                               -1, nullptr};
  return PyModule_Create(&module);
}

#ifdef SGLD_WITH_CUDA
TORCH_LIBRARY_IMPL(sglang_diffusion_C, CUDA, m) {
  m.impl("norm_modulate_out", &norm_modulate_out_cuda);
  m.impl("gated_residual_norm_modulate_out", &gated_residual_norm_modulate_out_cuda);
  m.impl("attention_out", &attention_out_cuda);
  m.impl("rope_out", &rope_out_cuda);
  m.impl("qk_rms_norm_out", &qk_rms_norm_out_cuda);
  m.impl("gelu_tanh_out", &gelu_tanh_out_cuda);
  m.impl("permute_rows_out", &permute_rows_out_cuda);
}
#endif
