// AVX-512 helpers shared by the CPU kernels (rolling_attention's levels, gelu_tanh): one exp2
// for every rolling_attention level, so equal scores give equal P there; bf16 <-> fp32 lanes
// rounded exactly as cpu_utils.h's scalar helpers. Functions carry their own `target`
// attribute (an extension is compiled without ISA flags); use them only under
// LIVEAVATAR_RT_RA_AVX512 (x86-64 GCC/Clang) and after `avx512_supported()`.
#pragma once

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>

#include <initializer_list>

#define LIVEAVATAR_RT_RA_AVX512 1

#define RA_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma")))
#define RA_AVX512BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,avx512bf16")))

namespace liveavatar_rt::cpu {
namespace {

// 2^x: 2^round(x) by vscalefps (exact, 0 below -149) times a degree-6 fit of 2^f on
// [-0.5, 0.5] (max error 0.7 ulp). x is clamped so that -inf gives 0, not NaN.
RA_AVX512 inline __m512 exp2_ps(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-200.f));
  const __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(x, n);
  __m512 p = _mm512_set1_ps(1.546973217e-04f);
  for (float c : {1.340043265e-03f, 9.618025273e-03f, 5.550327152e-02f, 2.402265072e-01f, 6.931471825e-01f, 1.f})
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(c));
  return _mm512_scalef_ps(p, n);
}

// The first n lanes (none for n <= 0).
inline __mmask16 mask16(int64_t n) {
  return n >= 16 ? __mmask16(0xFFFF) : n <= 0 ? __mmask16(0) : __mmask16((1u << n) - 1u);
}

// fp32 -> bf16 bits, round to nearest even, NaN -> 0x7FC0: float_to_bf16_bits (cpu_utils.h), 16 lanes.
RA_AVX512 inline __m256i bf16_rne(__m512 x) {
  const __m512i u = _mm512_castps_si512(x);
  const __m512i bias = _mm512_add_epi32(_mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1)),
                                        _mm512_set1_epi32(0x7FFF));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, bias), 16);
  const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7FFFFFFF)),
                                                _mm512_set1_epi32(0x7F800000));
  r = _mm512_mask_mov_epi32(r, nan, _mm512_set1_epi32(0x7FC0));
  return _mm512_cvtepi32_epi16(r);
}

// The `live` lanes of 16 bf16 values at p as fp32 (the others 0).
RA_AVX512 inline __m512 load_bf16_ps(const void* p, __mmask16 live) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(live, p)), 16));
}

// AVX-512 F/BW/VL/DQ and FMA on this CPU (what RA_AVX512 code needs).
inline bool avx512_supported() {
  static const bool ok = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("fma");
  }();
  return ok;
}

// ... and AVX512-BF16 (what RA_AVX512BF16 code needs).
inline bool avx512bf16_supported() {
  static const bool ok = [] {
    __builtin_cpu_init();
    return avx512_supported() && __builtin_cpu_supports("avx512bf16");
  }();
  return ok;
}

}  // namespace
}  // namespace liveavatar_rt::cpu
#endif
