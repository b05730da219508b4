// AVX-512 helpers shared by rolling_attention's micro-kernels (rolling_attention_kernels.cpp,
// rolling_attention_amx.cpp): one exp2 for every level, so equal scores give equal P there.
// Functions carry their own `target` attribute (an extension is compiled without ISA flags);
// include only from x86-64 GCC/Clang code (LIVEAVATAR_RT_RA_AVX512).
#pragma once

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>

#include <initializer_list>

#define LIVEAVATAR_RT_RA_AVX512 1

#define RA_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma")))

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

}  // namespace
}  // namespace liveavatar_rt::cpu
#endif
