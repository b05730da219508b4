// The block's norm chains in one pass per row (liveavatar_rt/ops/block_norms.py):
//
//   ln_modulate:   h = modulate(dtype_x(LN(x)), shift, scale)                       (norm1, norm2)
//   residual_norm: r = fp32(x) + fp32(y) * gate  (gate absent: x + y)
//                  h = out(LN(round?(r)) [* w + b] [modulated by shift, scale])      (norm3, norm2)
//
// Each stage is the same arithmetic as the separate kernels (layer_norm.cpp's lane_sum
// statistics, modulate.cpp's fp32 `x * (1 + scale) + shift`, gated_residual.cpp's `x + y * g`),
// in the same order, so the result equals those kernels chained, bit for bit; what goes is the
// fp32 intermediates' round trips through memory (the block's [B*L, C] fp32 tensors do not fit
// in L2: these ops are bandwidth-bound) and the dispatcher calls between them.
//
// x, y: [B, L, C] fp32|bf16, last dim contiguous; gate/shift/scale: fp32 [B|1, F, C] per frame
// (L = F * S); weight/bias: [C] any float dtype. Outputs contiguous.
#include "ops.h"
#include "cpu/cpu_utils.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <optional>
#include <vector>

namespace liveavatar_rt {
namespace cpu {
namespace {

struct Frames {  // fp32 [B|1, F, C] rows, per frame (nullptr: absent)
  const float* p = nullptr;
  int64_t sb = 0, sf = 0;
  const float* row(int64_t b, int64_t f) const { return p + b * sb + f * sf; }
};

struct NormArgs {
  const void* x;
  int64_t x_sb, x_sl;
  const void* y;  // nullptr: no residual (ln_modulate)
  int64_t y_sb, y_sl;
  Frames gate, shift, scale;
  const float* w;  // [C] fp32 or nullptr
  const float* bias;
  float* res;      // contiguous fp32 [B, L, C] (residual_norm) or nullptr
  void* out;       // contiguous [B, L, C]
  int64_t L, S, C;
  float eps;
  bool round_in;   // LN of the residual rounded to the output dtype first (norm3's .to(dtype))
};

// One row. TX/TY: input dtypes; TO: the output dtype (also what `round_in` rounds to); TR: what
// ln_modulate's norm is rounded to (x's dtype, published type_as(x)).
template <typename TX, typename TY, typename TO>
inline void norm_row(const NormArgs& a, int64_t r, float* __restrict v) {
  const int64_t b = r / a.L, l = r - b * a.L, f = l / a.S, C = a.C;
  const TX* xr = static_cast<const TX*>(a.x) + b * a.x_sb + l * a.x_sl;
  const TO* ot = nullptr;  // rounding tags
  const TX* xt = nullptr;
  if (a.y != nullptr) {  // the residual update, written out in fp32
    const TY* yr = static_cast<const TY*>(a.y) + b * a.y_sb + l * a.y_sl;
    float* __restrict res = a.res + r * C;
    if (a.gate.p != nullptr) {
      const float* g = a.gate.row(b, f);
      for (int64_t c = 0; c < C; ++c) {
        const float p = load_float(yr, c) * g[c];
        res[c] = load_float(xr, c) + p;
      }
    } else {
      for (int64_t c = 0; c < C; ++c) res[c] = load_float(xr, c) + load_float(yr, c);
    }
    if (a.round_in) {
      for (int64_t c = 0; c < C; ++c) v[c] = round_to(res[c], ot);
    } else {
      for (int64_t c = 0; c < C; ++c) v[c] = res[c];
    }
  } else {
    for (int64_t c = 0; c < C; ++c) v[c] = load_float(xr, c);
  }
  const float inv_c = 1.f / static_cast<float>(C);
  const float mean = lane_sum(v, C, 0.f, false) * inv_c;
  const float var = lane_sum(v, C, mean, true) * inv_c;
  const float rstd = 1.f / std::sqrt(var + a.eps);
  for (int64_t c = 0; c < C; ++c) v[c] = (v[c] - mean) * rstd;
  if (a.w != nullptr)
    for (int64_t c = 0; c < C; ++c) v[c] *= a.w[c];
  if (a.bias != nullptr)
    for (int64_t c = 0; c < C; ++c) v[c] += a.bias[c];
  if (a.y == nullptr)  // ln_modulate: the norm rounded to x's dtype before the fp32 modulation
    for (int64_t c = 0; c < C; ++c) v[c] = round_to(v[c], xt);
  TO* o = static_cast<TO*>(a.out) + r * C;
  if (a.shift.p != nullptr) {
    const float* sh = a.shift.row(b, f);
    const float* sc = a.scale.row(b, f);
    for (int64_t c = 0; c < C; ++c) {
      const float t = 1.f + sc[c];
      const float p = v[c] * t;
      store_float(o, c, p + sh[c]);
    }
  } else {
    for (int64_t c = 0; c < C; ++c) store_float(o, c, v[c]);
  }
}

template <typename TX, typename TY, typename TO>
inline void norm_rows(const NormArgs& a, int64_t r0, int64_t r1) {
  std::vector<float> v(a.C);
  for (int64_t r = r0; r < r1; ++r) norm_row<TX, TY, TO>(a, r, v.data());
}

using BF = c10::BFloat16;

LIVEAVATAR_RT_ISA_CLONES
void norm_rows_dispatch(const NormArgs& a, bool x_bf16, bool y_bf16, bool out_bf16, int64_t r0, int64_t r1) {
  // (x, y, out) dtype triples the block uses, plus all-fp32 (the high-precision model)
  if (x_bf16 && y_bf16 && out_bf16) return norm_rows<BF, BF, BF>(a, r0, r1);
  if (!x_bf16 && y_bf16 && out_bf16) return norm_rows<float, BF, BF>(a, r0, r1);
  if (x_bf16 && !y_bf16 && out_bf16) return norm_rows<BF, float, BF>(a, r0, r1);
  if (!x_bf16 && !y_bf16 && out_bf16) return norm_rows<float, float, BF>(a, r0, r1);
  if (x_bf16 && y_bf16) return norm_rows<BF, BF, float>(a, r0, r1);
  if (!x_bf16 && y_bf16) return norm_rows<float, BF, float>(a, r0, r1);
  if (x_bf16) return norm_rows<BF, float, float>(a, r0, r1);
  return norm_rows<float, float, float>(a, r0, r1);
}

const char* kLnMod = "liveavatar_rt::ln_modulate";
const char* kResNorm = "liveavatar_rt::residual_norm";

void check_x(const at::Tensor& x, const char* op, const char* name) {
  TORCH_CHECK(x.device().is_cpu(), op, " (CPU kernel): ", name, " must be on CPU, got ", x.device());
  TORCH_CHECK(is_fp32_or_bf16(x.scalar_type()), op, ": ", name, " must be float32 or bfloat16, got ", x.scalar_type());
  TORCH_CHECK(x.dim() == 3, op, ": ", name, " must be [B, L, C], got ", x.sizes());
}

// fp32 [B|1, F, 1, C] per-frame rows of x [B, L, C] -> Frames over a [B|1, F, C] view (kept alive in `keep`).
Frames frames(const std::optional<at::Tensor>& t, const at::Tensor& x, const char* op, const char* name,
              std::vector<at::Tensor>& keep, int64_t& F) {
  if (!t.has_value()) return {};
  TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == at::kFloat, op, ": ", name,
              " must be a float32 CPU tensor, got ", t->device(), " ", t->scalar_type());
  const int64_t B = x.size(0), L = x.size(1), C = x.size(2);
  TORCH_CHECK(t->dim() == 4 && t->size(2) == 1 && t->size(3) == C && (t->size(0) == B || t->size(0) == 1), op, ": ",
              name, " must be [B|1, F, 1, C] = [", B, "|1, F, 1, ", C, "], got ", t->sizes());
  const int64_t f = t->size(1);
  TORCH_CHECK(f > 0 && L % f == 0, op, ": ", name, " frames F=", f, " must divide x's tokens L=", L);
  TORCH_CHECK(F == 0 || F == f, op, ": ", name, " has ", f, " frames, another per-frame input ", F);
  F = f;
  at::Tensor r = t->squeeze(2);
  if (r.stride(2) != 1 && C > 1) r = r.contiguous();
  keep.push_back(r);
  return Frames{r.data_ptr<float>(), r.size(0) == 1 ? 0 : r.stride(0), r.stride(1)};
}

at::Tensor rows_contig(const at::Tensor& t) { return t.size(2) == 1 || t.stride(2) == 1 ? t : t.contiguous(); }

void run(NormArgs& a, const at::Tensor& x, const at::Tensor* y, const at::Tensor& out) {
  a.x = x.data_ptr(), a.x_sb = x.stride(0), a.x_sl = x.stride(1);
  if (y != nullptr) a.y = y->data_ptr(), a.y_sb = y->stride(0), a.y_sl = y->stride(1);
  a.out = out.data_ptr();
  a.L = x.size(1), a.C = x.size(2);
  const bool x_bf16 = x.scalar_type() == at::kBFloat16;
  const bool y_bf16 = y != nullptr && y->scalar_type() == at::kBFloat16;
  const bool out_bf16 = out.scalar_type() == at::kBFloat16;
  at::parallel_for(0, x.size(0) * a.L, grain_rows(a.C), [&](int64_t r0, int64_t r1) {
    norm_rows_dispatch(a, x_bf16, y_bf16, out_bf16, r0, r1);
  });
}

}  // namespace
}  // namespace cpu

at::Tensor ln_modulate_cpu(const at::Tensor& x_in, const at::Tensor& shift, const at::Tensor& scale, double eps,
                           at::ScalarType out_dtype) {
  cpu::check_x(x_in, cpu::kLnMod, "x");
  TORCH_CHECK(cpu::is_fp32_or_bf16(out_dtype), cpu::kLnMod, ": out_dtype must be float32 or bfloat16, got ", out_dtype);
  std::vector<at::Tensor> keep;
  int64_t F = 0;
  cpu::NormArgs a{};
  a.shift = cpu::frames(shift, x_in, cpu::kLnMod, "shift", keep, F);
  a.scale = cpu::frames(scale, x_in, cpu::kLnMod, "scale", keep, F);
  at::Tensor out = at::empty(x_in.sizes(), x_in.options().dtype(out_dtype).memory_format(at::MemoryFormat::Contiguous));
  if (x_in.numel() == 0) return out;
  const at::Tensor x = cpu::rows_contig(x_in);
  a.S = x.size(1) / F, a.eps = static_cast<float>(eps);
  cpu::run(a, x, nullptr, out);
  return out;
}

std::tuple<at::Tensor, at::Tensor> residual_norm_cpu(const at::Tensor& x_in, const at::Tensor& y_in,
                                                     const std::optional<at::Tensor>& gate,
                                                     const std::optional<at::Tensor>& weight,
                                                     const std::optional<at::Tensor>& bias,
                                                     const std::optional<at::Tensor>& shift,
                                                     const std::optional<at::Tensor>& scale, double eps,
                                                     bool round_input, at::ScalarType out_dtype) {
  cpu::check_x(x_in, cpu::kResNorm, "x");
  cpu::check_x(y_in, cpu::kResNorm, "y");
  TORCH_CHECK(x_in.sizes() == y_in.sizes(), cpu::kResNorm, ": x and y must have one shape, got ", x_in.sizes(),
              " and ", y_in.sizes());
  TORCH_CHECK(cpu::is_fp32_or_bf16(out_dtype), cpu::kResNorm, ": out_dtype must be float32 or bfloat16, got ",
              out_dtype);
  TORCH_CHECK(shift.has_value() == scale.has_value(), cpu::kResNorm, ": shift and scale come together");
  const int64_t C = x_in.size(2);
  std::vector<at::Tensor> keep;
  int64_t F = 0;
  cpu::NormArgs a{};
  a.gate = cpu::frames(gate, x_in, cpu::kResNorm, "gate", keep, F);
  a.shift = cpu::frames(shift, x_in, cpu::kResNorm, "shift", keep, F);
  a.scale = cpu::frames(scale, x_in, cpu::kResNorm, "scale", keep, F);
  const auto w = cpu::affine_fp32(weight, C, cpu::kResNorm, "weight");
  const auto b = cpu::affine_fp32(bias, C, cpu::kResNorm, "bias");
  const auto contig = x_in.options().memory_format(at::MemoryFormat::Contiguous);
  at::Tensor res = at::empty(x_in.sizes(), contig.dtype(at::kFloat));
  at::Tensor out = at::empty(x_in.sizes(), contig.dtype(out_dtype));
  if (x_in.numel() == 0) return {res, out};
  const at::Tensor x = cpu::rows_contig(x_in), y = cpu::rows_contig(y_in);
  a.w = w ? w->data_ptr<float>() : nullptr;
  a.bias = b ? b->data_ptr<float>() : nullptr;
  a.res = res.data_ptr<float>();
  a.S = F > 0 ? x.size(1) / F : x.size(1);
  a.eps = static_cast<float>(eps), a.round_in = round_input;
  cpu::run(a, x, &y, out);
  return {res, out};
}

}  // namespace liveavatar_rt
