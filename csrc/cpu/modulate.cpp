// modulate on CPU: adaLN modulation, bit-identical to liveavatar_rt/ops/modulate.py::modulate.
//
//   out[b, l, c] = out_dtype(fp32(x_norm[b, l, c]) * (1 + scale[b, f, c]) + shift[b, f, c]),
//   f = l / S,  S = L / F (tokens per frame)
//
// x_norm: [B, L, C] fp32|bf16; shift, scale: fp32 [B|1, F, C]. F == L is per-token
// modulation, F == 1 per-sample; in between, one shift/scale row per frame of S consecutive
// tokens. One fused pass (the reference makes four tensors), multiply then add, each rounded
// to fp32 as the reference does (no FMA: the build passes -ffp-contract=off).
#include "modulate_checks.h"
#include "ops.h"
#include "cpu/cpu_utils.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

namespace liveavatar_rt {
namespace cpu {
namespace {

struct ModulateArgs {
  const void* x;
  int64_t x_sb, x_sl;  // element strides of x_norm's batch and token dims
  const float* shift;
  int64_t sh_sb, sh_sf;
  const float* scale;
  int64_t sc_sb, sc_sf;
  void* out;  // contiguous [B, L, C]
  int64_t L, S, C;
};

template <typename TI, typename TO>
inline void modulate_rows(const ModulateArgs& a, int64_t r0, int64_t r1) {
  const auto* x = static_cast<const TI*>(a.x);
  auto* out = static_cast<TO*>(a.out);
  const int64_t C = a.C;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t b = r / a.L;
    const int64_t l = r - b * a.L;
    const int64_t f = l / a.S;
    const TI* xr = x + b * a.x_sb + l * a.x_sl;
    const float* sh = a.shift + b * a.sh_sb + f * a.sh_sf;
    const float* sc = a.scale + b * a.sc_sb + f * a.sc_sf;
    TO* o = out + r * C;
    for (int64_t c = 0; c < C; ++c) {
      const float t = 1.f + sc[c];
      const float p = load_float(xr, c) * t;
      store_float(o, c, p + sh[c]);
    }
  }
}

LIVEAVATAR_RT_ISA_CLONES
void modulate_rows_dispatch(const ModulateArgs& a, bool x_bf16, bool out_bf16, int64_t r0, int64_t r1) {
  if (x_bf16) {
    if (out_bf16) return modulate_rows<c10::BFloat16, c10::BFloat16>(a, r0, r1);
    return modulate_rows<c10::BFloat16, float>(a, r0, r1);
  }
  if (out_bf16) return modulate_rows<float, c10::BFloat16>(a, r0, r1);
  return modulate_rows<float, float>(a, r0, r1);
}

void check_inputs(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& scale) {
  TORCH_CHECK(x.device().is_cpu() && shift.device().is_cpu() && scale.device().is_cpu(),
              "liveavatar_rt::modulate (CPU kernel): all tensors must be on CPU, got x_norm on ", x.device(),
              ", shift on ", shift.device(), ", scale on ", scale.device());
  liveavatar_rt::check_modulate_args(x, shift, scale);
}

}  // namespace
}  // namespace cpu

void modulate_out_cpu(at::Tensor& out, const at::Tensor& x_in, const at::Tensor& shift_in, const at::Tensor& scale_in) {
  cpu::check_inputs(x_in, shift_in, scale_in);
  TORCH_CHECK(out.device().is_cpu(), "liveavatar_rt::modulate_out: out must be on CPU, got ", out.device());
  TORCH_CHECK(cpu::is_fp32_or_bf16(out.scalar_type()),
              "liveavatar_rt::modulate_out: out must be float32 or bfloat16, got ", out.scalar_type());
  TORCH_CHECK(out.sizes() == x_in.sizes(), "liveavatar_rt::modulate_out: out shape ", out.sizes(),
              " != x_norm shape ", x_in.sizes());
  TORCH_CHECK(out.is_contiguous(), "liveavatar_rt::modulate_out: out must be contiguous");
  if (x_in.numel() == 0) return;

  // Rows must be contiguous in C; batch / token / frame strides are free (including the
  // stride-0 batch or frame dims of expanded shift/scale).
  const int64_t C = x_in.size(2);
  auto rows_contig = [C](const at::Tensor& t) { return C == 1 || t.stride(2) == 1 ? t : t.contiguous(); };
  const at::Tensor x = rows_contig(x_in), shift = rows_contig(shift_in), scale = rows_contig(scale_in);
  const int64_t B = x.size(0), L = x.size(1), F = shift.size(1);
  const bool bcast_b = shift.size(0) == 1;

  cpu::ModulateArgs a{};
  a.x = x.data_ptr();
  a.x_sb = x.stride(0);
  a.x_sl = x.stride(1);
  a.shift = shift.data_ptr<float>();
  a.sh_sb = bcast_b ? 0 : shift.stride(0);
  a.sh_sf = shift.stride(1);
  a.scale = scale.data_ptr<float>();
  a.sc_sb = bcast_b ? 0 : scale.stride(0);
  a.sc_sf = scale.stride(1);
  a.out = out.data_ptr();
  a.L = L;
  a.S = L / F;
  a.C = C;
  const bool x_bf16 = x.scalar_type() == at::kBFloat16;
  const bool out_bf16 = out.scalar_type() == at::kBFloat16;
  at::parallel_for(0, B * L, cpu::grain_rows(C), [&](int64_t r0, int64_t r1) {
    cpu::modulate_rows_dispatch(a, x_bf16, out_bf16, r0, r1);
  });
}

at::Tensor modulate_cpu(
    const at::Tensor& x_norm, const at::Tensor& shift, const at::Tensor& scale, at::ScalarType out_dtype) {
  const char* op = "liveavatar_rt::modulate";
  const at::Tensor x3 = cpu::frames_as_tokens(x_norm);
  const at::Tensor sh3 = cpu::frame_rows(shift, x_norm, op, "shift"), sc3 = cpu::frame_rows(scale, x_norm, op, "scale");
  cpu::check_inputs(x3, sh3, sc3);
  TORCH_CHECK(cpu::is_fp32_or_bf16(out_dtype), "liveavatar_rt::modulate: out_dtype must be float32 or bfloat16, got ",
              out_dtype);
  at::Tensor out = at::empty(x_norm.sizes(), x_norm.options().dtype(out_dtype).memory_format(at::MemoryFormat::Contiguous));
  at::Tensor out3 = cpu::frames_as_tokens(out);
  modulate_out_cpu(out3, x3, sh3, sc3);
  return out;
}

}  // namespace liveavatar_rt
