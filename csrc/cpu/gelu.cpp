// gelu_tanh on CPU: GELU with the tanh approximation (liveavatar_rt/ops/activation.py), the
// FFN's activation, in one vectorised pass.
//
//   gelu(x) = 0.5 x (1 + tanh(z)),  z = sqrt(2/pi) (x + 0.044715 x^3)
//           = x / (1 + exp(-2 z))   (the same function; one exp, no tanh)
//
// x: [...] fp32|bf16 (any strides; copied when not contiguous) -> same shape and dtype,
// contiguous, computed in fp32 and rounded once, as torch does for bf16. exp is 2^t with
// t = -2 z log2(e): 2^round(t) built in the exponent bits times a degree-6 polynomial of 2^f on
// [-0.5, 0.5] (a few fp32 ulps, against torch's vectorised tanh: within tests/tolerances.py's
// provider rule; bf16 outputs mostly round to the same value). torch's own tanh-GELU on CPU
// measured ~150 us for the tiny FFN's [192, 256] (3 per denoising step).
#include "ops.h"
#include "cpu/cpu_utils.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

namespace liveavatar_rt {
namespace cpu {
namespace {

// 2^t for t in [-126, 126] (callers clamp), written with integer bit tricks so it vectorises.
inline float exp2_clamped(float t) {
  const float n = std::nearbyint(t);
  const float f = t - n;
  float p = 1.546973217e-04f;
  p = p * f + 1.340043265e-03f;
  p = p * f + 9.618025273e-03f;
  p = p * f + 5.550327152e-02f;
  p = p * f + 2.402265072e-01f;
  p = p * f + 6.931471825e-01f;
  p = p * f + 1.f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

template <typename T>
inline void gelu_range(const T* __restrict x, T* __restrict out, int64_t i0, int64_t i1) {
  constexpr float kK = 0.7978845608028654f;  // sqrt(2 / pi)
  constexpr float kMinus2Log2e = -2.8853900817779268f;  // -2 log2(e)
  for (int64_t i = i0; i < i1; ++i) {
    const float v = load_float(x, i);
    const float z = kK * (v + 0.044715f * v * v * v);
    const float t = std::min(126.f, std::max(-126.f, kMinus2Log2e * z));
    store_float(out, i, v / (1.f + exp2_clamped(t)));
  }
}

LIVEAVATAR_RT_ISA_CLONES
void gelu_dispatch(const void* x, void* out, bool bf16, int64_t i0, int64_t i1) {
  if (bf16) {
    return gelu_range(static_cast<const c10::BFloat16*>(x), static_cast<c10::BFloat16*>(out), i0, i1);
  }
  gelu_range(static_cast<const float*>(x), static_cast<float*>(out), i0, i1);
}

}  // namespace
}  // namespace cpu

at::Tensor gelu_tanh_cpu(const at::Tensor& x_in) {
  TORCH_CHECK(x_in.device().is_cpu(), "liveavatar_rt::gelu_tanh (CPU kernel): x must be on CPU, got ", x_in.device());
  TORCH_CHECK(cpu::is_fp32_or_bf16(x_in.scalar_type()), "liveavatar_rt::gelu_tanh: x must be float32 or bfloat16, got ",
              x_in.scalar_type());
  const at::Tensor x = x_in.contiguous();
  at::Tensor out = at::empty(x.sizes(), x.options());
  const bool bf16 = x.scalar_type() == at::kBFloat16;
  at::parallel_for(0, x.numel(), 32768, [&](int64_t i0, int64_t i1) {
    cpu::gelu_dispatch(x.data_ptr(), out.data_ptr(), bf16, i0, i1);
  });
  return out;
}

}  // namespace liveavatar_rt
