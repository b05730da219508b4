// gelu_tanh on CPU: GELU with the tanh approximation (liveavatar_rt/ops/activation.py), the
// FFN's activation, in one vectorised pass.
//
//   gelu(x) = 0.5 x (1 + tanh(z)),  z = sqrt(2/pi) (x + 0.044715 x^3)
//           = x / (1 + exp(-2 z))   (the same function; one exp, no tanh)
//
// x: [...] fp32|bf16 (any strides; copied when not contiguous) -> same shape and dtype,
// contiguous, computed in fp32 and rounded once, as torch does for bf16. On AVX-512 CPUs the
// loop runs 16 lanes in intrinsics with avx512.h's exp2_ps (GCC kept the plain loop scalar,
// with data-dependent branches for the clamps: 405 vs 222 us at [192, 1536] bf16, 1 thread);
// elsewhere the plain loop below, where exp is 2^t with
// t = -2 z log2(e): 2^round(t) built in the exponent bits times a degree-6 polynomial of 2^f on
// [-0.5, 0.5] (a few fp32 ulps, against torch's vectorised tanh: within tests/tolerances.py's
// provider rule; bf16 outputs mostly round to the same value). torch's own tanh-GELU on CPU
// measured ~150 us for the tiny FFN's [192, 256] (3 per denoising step).
#include "ops.h"
#include "cpu/avx512.h"
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

#ifdef LIVEAVATAR_RT_RA_AVX512
// GCC 12's own unmasked AVX-512 intrinsics trip -Wmaybe-uninitialized (GCC PR 105593).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
RA_AVX512 inline __m512 gelu_ps(__m512 v) {
  const __m512 cube = _mm512_mul_ps(_mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.044715f), v), v), v);
  const __m512 z = _mm512_mul_ps(_mm512_set1_ps(0.7978845608028654f), _mm512_add_ps(v, cube));
  __m512 t = _mm512_mul_ps(_mm512_set1_ps(-2.8853900817779268f), z);  // -2 z log2(e)
  t = _mm512_min_ps(_mm512_set1_ps(126.f), _mm512_max_ps(_mm512_set1_ps(-126.f), t));
  return _mm512_div_ps(v, _mm512_add_ps(_mm512_set1_ps(1.f), exp2_ps(t)));
}

// The 16-lane form of gelu_range; the tail runs masked.
RA_AVX512 void gelu_avx512(const void* x, void* out, bool bf16, int64_t i0, int64_t i1) {
  for (int64_t i = i0; i < i1; i += 16) {
    const __mmask16 live = mask16(i1 - i);
    if (bf16) {
      const __m512 v = load_bf16_ps(static_cast<const uint16_t*>(x) + i, live);
      _mm256_mask_storeu_epi16(static_cast<uint16_t*>(out) + i, live, bf16_rne(gelu_ps(v)));
    } else {
      const __m512 v = _mm512_maskz_loadu_ps(live, static_cast<const float*>(x) + i);
      _mm512_mask_storeu_ps(static_cast<float*>(out) + i, live, gelu_ps(v));
    }
  }
}

// bf16 with AVX512-BF16: the conversion is one vcvtneps2bf16 (round to nearest even, as
// bf16_rne; it also flushes fp32 denormals to 0, which no GELU output of a bf16 input is
// besides +-0 and tiny inputs' own halves, and keeps a NaN a NaN).
RA_AVX512BF16 void gelu_avx512bf16(const void* x, void* out, int64_t i0, int64_t i1) {
  for (int64_t i = i0; i < i1; i += 16) {
    const __mmask16 live = mask16(i1 - i);
    const __m512 v = load_bf16_ps(static_cast<const uint16_t*>(x) + i, live);
    _mm256_mask_storeu_epi16(static_cast<uint16_t*>(out) + i, live, (__m256i)_mm512_cvtneps_pbh(gelu_ps(v)));
  }
}
#pragma GCC diagnostic pop
#endif

LIVEAVATAR_RT_ISA_CLONES
void gelu_dispatch(const void* x, void* out, bool bf16, int64_t i0, int64_t i1) {
#ifdef LIVEAVATAR_RT_RA_AVX512
  if (bf16 && avx512bf16_supported()) return gelu_avx512bf16(x, out, i0, i1);
  if (avx512_supported()) return gelu_avx512(x, out, bf16, i0, i1);
#endif
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
