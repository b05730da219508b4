// Device-independent argument checks of liveavatar_rt::modulate, shared by the CPU kernel
// (csrc/cpu/modulate.cpp) and the CUDA binding (csrc/cuda/modulate_binding.cu), so both refuse
// the same inputs with the same messages. Each caller checks its own device first.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace liveavatar_rt {

inline void check_modulate_args(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& scale) {
  const auto xt = x.scalar_type();
  TORCH_CHECK(xt == at::kFloat || xt == at::kBFloat16,
              "liveavatar_rt::modulate: x_norm must be float32 or bfloat16, got ", xt);
  TORCH_CHECK(shift.scalar_type() == at::kFloat && scale.scalar_type() == at::kFloat,
              "liveavatar_rt::modulate: shift and scale must be float32, got ", shift.scalar_type(), " and ",
              scale.scalar_type());
  TORCH_CHECK(x.dim() == 3, "liveavatar_rt::modulate: x_norm must be [B, L, C], got shape ", x.sizes());
  TORCH_CHECK(shift.dim() == 3 && shift.sizes() == scale.sizes(),
              "liveavatar_rt::modulate: shift and scale must both be [B|1, F, C], got ", shift.sizes(), " and ",
              scale.sizes());
  const int64_t B = x.size(0), L = x.size(1), C = x.size(2), F = shift.size(1);
  TORCH_CHECK(shift.size(0) == B || shift.size(0) == 1, "liveavatar_rt::modulate: shift/scale batch ",
              shift.size(0), " must be 1 or x_norm's batch ", B);
  TORCH_CHECK(shift.size(2) == C, "liveavatar_rt::modulate: shift/scale channels ", shift.size(2),
              " != x_norm channels ", C);
  TORCH_CHECK((F > 0 && L % F == 0) || (F == 0 && L == 0), "liveavatar_rt::modulate: shift/scale frames F=", F,
              " must divide x_norm's tokens L=", L, " (S = L / F tokens per frame)");
}

}  // namespace liveavatar_rt
