// torch.ops.sglang_diffusion_C: the only C++ that sees a tensor. Every condition a kernel
// relies on is checked here, one message per condition; kernels get a plain params struct.
// The ops write into caller-given outputs; sglang_diffusion/ops/ wraps them as functional
// torch.library custom ops with fake implementations.
#include <Python.h>

#include <ATen/Version.h>
#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>
#include <torch/library.h>

#include <cmath>
#include <optional>
#include <string>

#include "cpu/isa.h"
#include "cpu/norm.h"

namespace {

namespace cpu = sglang_diffusion::cpu;

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

void check_cpu(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), op, ": ", name, " must be a CPU tensor, got one on ",
              t.device());
}

void check_x(const at::Tensor& x, const char* op, const char* name) {
  check_cpu(x, op, name);
  TORCH_CHECK(x.dim() == 3, op, ": ", name, " must be 3-D [B, S, D], got shape ", x.sizes());
  TORCH_CHECK(is_kernel_dtype(x.scalar_type()), op, ": ", name,
              " must be float32, bfloat16 or float16, got ", x.scalar_type());
  TORCH_CHECK(x.size(2) > 0, op, ": ", name, " must have D > 0, got shape ", x.sizes());
  TORCH_CHECK(x.is_contiguous(), op, ": ", name, " must be contiguous");
}

// An activation-shaped tensor (out, residual, ...): like `x` in shape, dtype and layout.
void check_like_x(const at::Tensor& t, const at::Tensor& x, const char* op, const char* name) {
  check_cpu(t, op, name);
  TORCH_CHECK(t.sizes() == x.sizes(), op, ": ", name, " must have x's shape ", x.sizes(),
              ", got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), op, ": ", name, " must have x's dtype ",
              x.scalar_type(), ", got ", t.scalar_type());
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous");
}

// scale, shift, gate: [D], [B, 1, D], [B, S, D] or any shape that broadcasts to x's.
cpu::ModParam modulation(const at::Tensor& t, const at::Tensor& x, const char* op,
                         const char* name) {
  check_cpu(t, op, name);
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
  check_cpu(*t, op, name);
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

}  // namespace

TORCH_LIBRARY(sglang_diffusion_C, m) {
  m.def(
      "norm_modulate_out(Tensor(a!) out, Tensor x, Tensor scale, Tensor shift, "
      "Tensor? weight, Tensor? bias, float eps, str norm_type) -> ()");
  m.def(
      "gated_residual_norm_modulate_out(Tensor(a!) residual_out, Tensor(b!) out, "
      "Tensor residual, Tensor x, Tensor? gate, Tensor scale, Tensor shift, Tensor? weight, "
      "Tensor? bias, float eps, str norm_type) -> ()");
  // Which CPU build the kernels run ("avx2" or "default"), for the dispatch log.
  m.def("cpu_isa() -> str", &cpu_isa_name);
}

TORCH_LIBRARY_IMPL(sglang_diffusion_C, CPU, m) {
  m.impl("norm_modulate_out", &norm_modulate_out);
  m.impl("gated_residual_norm_modulate_out", &gated_residual_norm_modulate_out);
}

// `import sglang_diffusion._C` loads this library, which registers the ops above with torch;
// the Python module itself is empty.
PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C",
                               "Native kernels, registered as torch.ops.sglang_diffusion_C.",
                               -1, nullptr};
  return PyModule_Create(&module);
}
