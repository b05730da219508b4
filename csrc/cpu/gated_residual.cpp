// gated_residual on CPU: the block's fp32 residual update, bit-identical to
// liveavatar_rt/ops/modulate.py::gated_residual.
//
//   out[b, l, c] = fp32(x[b, l, c]) + fp32(y[b, l, c]) * gate[b, f, c],   f = l / S, S = L / F
//
// x: [B, L, C] fp32|bf16 (the residual stream), y: [B, L, C] fp32|bf16 (a branch output in the
// compute dtype), gate: fp32 [B|1, F, C] (one row per frame of S consecutive tokens, as
// modulate's shift/scale) -> fp32 [B, L, C]; or the block's per-frame form, x/y [B, F, S, C]
// with gate [B|1, F|1, 1, C] -> fp32 [B, F, S, C]. The reference makes three temporaries (two upcasts
// and the product); here one pass reads x and y once. Multiply, round, add, round: no FMA (the
// build passes -ffp-contract=off), so every output equals the reference's.
#include "ops.h"
#include "cpu/cpu_utils.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

namespace liveavatar_rt {
namespace cpu {
namespace {

struct GatedArgs {
  const void* x;
  int64_t x_sb, x_sl;
  const void* y;
  int64_t y_sb, y_sl;
  const float* gate;
  int64_t g_sb, g_sf;
  float* out;  // contiguous [B, L, C]
  int64_t L, S, C;
};

template <typename TX, typename TY>
inline void gated_rows(const GatedArgs& a, int64_t r0, int64_t r1) {
  const auto* x = static_cast<const TX*>(a.x);
  const auto* y = static_cast<const TY*>(a.y);
  const int64_t C = a.C;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t b = r / a.L, l = r - b * a.L, f = l / a.S;
    const TX* xr = x + b * a.x_sb + l * a.x_sl;
    const TY* yr = y + b * a.y_sb + l * a.y_sl;
    const float* g = a.gate + b * a.g_sb + f * a.g_sf;
    float* o = a.out + r * C;
    for (int64_t c = 0; c < C; ++c) {
      const float p = load_float(yr, c) * g[c];
      o[c] = load_float(xr, c) + p;
    }
  }
}

LIVEAVATAR_RT_ISA_CLONES
void gated_rows_dispatch(const GatedArgs& a, bool x_bf16, bool y_bf16, int64_t r0, int64_t r1) {
  if (x_bf16) {
    if (y_bf16) return gated_rows<c10::BFloat16, c10::BFloat16>(a, r0, r1);
    return gated_rows<c10::BFloat16, float>(a, r0, r1);
  }
  if (y_bf16) return gated_rows<float, c10::BFloat16>(a, r0, r1);
  return gated_rows<float, float>(a, r0, r1);
}

void check(const at::Tensor& x, const at::Tensor& y, const at::Tensor& gate) {
  const char* op = "liveavatar_rt::gated_residual";
  for (const at::Tensor* t : {&x, &y, &gate})
    TORCH_CHECK(t->device().is_cpu(), op, " (CPU kernel): every input must be on CPU, got ", t->device());
  TORCH_CHECK(is_fp32_or_bf16(x.scalar_type()) && is_fp32_or_bf16(y.scalar_type()), op,
              ": x and y must be float32 or bfloat16, got ", x.scalar_type(), " and ", y.scalar_type());
  TORCH_CHECK(gate.scalar_type() == at::kFloat, op, ": gate must be float32, got ", gate.scalar_type());
  TORCH_CHECK(x.dim() == 3 && x.sizes() == y.sizes(), op, ": x and y must be [B, L, C] of one shape, got ",
              x.sizes(), " and ", y.sizes());
  TORCH_CHECK(gate.dim() == 3, op, ": gate must be [B|1, F, C], got ", gate.sizes());
  const int64_t B = x.size(0), L = x.size(1), C = x.size(2), F = gate.size(1);
  TORCH_CHECK(gate.size(0) == B || gate.size(0) == 1, op, ": gate batch ", gate.size(0), " must be 1 or x's batch ", B);
  TORCH_CHECK(gate.size(2) == C, op, ": gate channels ", gate.size(2), " != x channels ", C);
  TORCH_CHECK((F > 0 && L % F == 0) || (F == 0 && L == 0), op, ": gate frames F=", F, " must divide x's tokens L=", L,
              " (S = L / F tokens per frame)");
}

}  // namespace
}  // namespace cpu

void gated_residual_out_cpu(at::Tensor& out, const at::Tensor& x_in, const at::Tensor& y_in, const at::Tensor& gate_in) {
  cpu::check(x_in, y_in, gate_in);
  TORCH_CHECK(out.device().is_cpu() && out.scalar_type() == at::kFloat && out.sizes() == x_in.sizes() &&
                  out.is_contiguous(),
              "liveavatar_rt::gated_residual_out: out must be a contiguous CPU float32 tensor of x's shape ",
              x_in.sizes(), ", got ", out.device(), " ", out.scalar_type(), " ", out.sizes());
  if (x_in.numel() == 0) return;
  const int64_t C = x_in.size(2);
  auto rows_contig = [C](const at::Tensor& t) { return C == 1 || t.stride(2) == 1 ? t : t.contiguous(); };
  const at::Tensor x = rows_contig(x_in), y = rows_contig(y_in), gate = rows_contig(gate_in);
  const bool bcast_b = gate.size(0) == 1;
  cpu::GatedArgs a{};
  a.x = x.data_ptr(), a.x_sb = x.stride(0), a.x_sl = x.stride(1);
  a.y = y.data_ptr(), a.y_sb = y.stride(0), a.y_sl = y.stride(1);
  a.gate = gate.data_ptr<float>(), a.g_sb = bcast_b ? 0 : gate.stride(0), a.g_sf = gate.stride(1);
  a.out = out.data_ptr<float>();
  a.L = x.size(1), a.S = x.size(1) / gate.size(1), a.C = C;
  const bool x_bf16 = x.scalar_type() == at::kBFloat16, y_bf16 = y.scalar_type() == at::kBFloat16;
  at::parallel_for(0, x.size(0) * a.L, cpu::grain_rows(C), [&](int64_t r0, int64_t r1) {
    cpu::gated_rows_dispatch(a, x_bf16, y_bf16, r0, r1);
  });
}

at::Tensor gated_residual_cpu(const at::Tensor& x, const at::Tensor& y, const at::Tensor& gate) {
  const char* op = "liveavatar_rt::gated_residual";
  TORCH_CHECK(x.dim() != 4 || y.sizes() == x.sizes(), op, ": x and y must have one shape, got ", x.sizes(), " and ",
              y.sizes());
  const at::Tensor x3 = cpu::frames_as_tokens(x), y3 = cpu::frames_as_tokens(y);
  const at::Tensor g3 = cpu::frame_rows(gate, x, op, "gate");
  cpu::check(x3, y3, g3);
  at::Tensor out = at::empty(x.sizes(), x.options().dtype(at::kFloat).memory_format(at::MemoryFormat::Contiguous));
  at::Tensor out3 = cpu::frames_as_tokens(out);
  gated_residual_out_cpu(out3, x3, y3, g3);
  return out;
}

}  // namespace liveavatar_rt
