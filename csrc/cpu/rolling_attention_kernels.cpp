// rolling_attention's micro-kernels (declared in rolling_attention_kernels.h): for one block of
// kTK keys, S^T = K QT (queries in vector lanes), the online softmax (running max / sum per
// query lane, base 2 with log2(e)/sqrt(D) folded into the score scale) and O += P V.
//
// Vectorisation: an extension is compiled without CPU-capability flags, so at::vec would be
// its generic array form. The AVX-512 kernels use intrinsics in functions with their own
// `target` attribute, chosen at run time (__builtin_cpu_supports); the portable kernels are
// plain loops (other CPUs; CTest checks them everywhere). bf16 inputs use AVX512-BF16 dot
// products for the scores where available: bf16 products are exact in fp32 and accumulate in
// fp32, so only the summation order differs. With them, P V also runs on bf16 pairs (P
// rounded to bf16, as flash attention does on GPU); otherwise P and V stay fp32. The AMX level
// (bf16 tile GEMMs, its own layouts) is rolling_attention_amx.cpp.
#include "cpu/rolling_attention_kernels.h"
#include "cpu/cpu_utils.h"
#include "cpu/avx512.h"  // exp2_ps; defines LIVEAVATAR_RT_RA_AVX512 on x86-64

#include <algorithm>
#include <cmath>
#include <cstring>

namespace liveavatar_rt::cpu {
namespace {

void rescale_rows(float* O, const float* alpha, int64_t rows, int64_t Dp) {
  for (int64_t r = 0; r < rows; ++r) {
    if (alpha[r] != 1.f) {
      for (int64_t d = 0; d < Dp; ++d) O[r * Dp + d] *= alpha[r];
    }
  }
}

// ---- portable kernels: plain loops (any CPU) ----------------------------------------------

void qk_portable(const float* QT, const void* const* krows, float* ST, int64_t nk, int64_t TQp, int64_t D) {
  for (int64_t j = 0; j < nk; ++j) {
    const float* k = static_cast<const float*>(krows[j]);
    float* s = ST + j * TQp;
    std::fill(s, s + TQp, 0.f);
    for (int64_t d = 0; d < D; ++d) {
      for (int64_t r = 0; r < TQp; ++r) s[r] += k[d] * QT[d * TQp + r];
    }
  }
}

void softmax_portable(float* ST, float* m, float* l, float* O, int64_t rows, int64_t nk, int64_t TQp, int64_t Dp,
                      float scale) {
  float alpha[kMaxTQ];
  for (int64_t r = 0; r < rows; ++r) {
    float mx = m[r], sum = 0.f;
    for (int64_t j = 0; j < nk; ++j) mx = std::max(mx, ST[j * TQp + r] * scale);
    for (int64_t j = 0; j < nk; ++j) {
      ST[j * TQp + r] = std::exp2(ST[j * TQp + r] * scale - mx);
      sum += ST[j * TQp + r];
    }
    alpha[r] = std::exp2(m[r] - mx);  // 0 on the first block (m = -inf)
    l[r] = l[r] * alpha[r] + sum;
    m[r] = mx;
  }
  rescale_rows(O, alpha, rows, Dp);
}

void pv_portable(const void* P, const void* V, float* O, int64_t rows_p, int64_t nk, int64_t TQp, int64_t D,
                 int64_t Dp) {
  const auto* PT = static_cast<const float*>(P);
  const auto* VR = static_cast<const float*>(V);
  for (int64_t j = 0; j < nk; ++j) {
    for (int64_t r = 0; r < rows_p; ++r) {
      const float p = PT[j * TQp + r];
      for (int64_t d = 0; d < D; ++d) O[r * Dp + d] += p * VR[j * Dp + d];
    }
  }
}

#ifdef LIVEAVATAR_RT_RA_AVX512
// GCC 12's own unmasked AVX-512 intrinsics trip -Wmaybe-uninitialized (GCC PR 105593).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
// ---- AVX-512 kernels (FMA: the summation order differs from torch's anyway) ---------------
// exp2_ps (2^x, max error 0.7 ulp, -inf -> 0): avx512.h, shared with the AMX level.

// kKR keys x NV vectors of 16 queries in registers; per step one QT row chunk, kKR broadcasts.
// Step = one dim (fp32) or one dim pair (BF16: vdpbf16ps adds both exact products).
template <int NV, bool BF16>
RA_AVX512BF16 inline void qk_tile(const float* QT, const void* const* krows, float* ST, int64_t j0, int64_t r0,
                                  int64_t TQp, int64_t steps) {
  __m512 acc[kKR][NV];
#pragma GCC unroll 16
  for (auto& a : acc)
#pragma GCC unroll 16
    for (auto& v : a) v = _mm512_setzero_ps();
  for (int64_t d = 0; d < steps; ++d) {
    __m512 q[NV];
#pragma GCC unroll 16
    for (int c = 0; c < NV; ++c) q[c] = _mm512_loadu_ps(QT + d * TQp + r0 + 16 * c);
#pragma GCC unroll 16
    for (int64_t i = 0; i < kKR; ++i) {
      if constexpr (BF16) {
        int pair;
        std::memcpy(&pair, static_cast<const char*>(krows[j0 + i]) + 4 * d, 4);
        const __m512bh k = (__m512bh)_mm512_set1_epi32(pair);
#pragma GCC unroll 16
        for (int c = 0; c < NV; ++c) acc[i][c] = _mm512_dpbf16_ps(acc[i][c], k, (__m512bh)q[c]);
      } else {
        const __m512 k = _mm512_set1_ps(static_cast<const float*>(krows[j0 + i])[d]);
#pragma GCC unroll 16
        for (int c = 0; c < NV; ++c) acc[i][c] = _mm512_fmadd_ps(k, q[c], acc[i][c]);
      }
    }
  }
#pragma GCC unroll 16
  for (int64_t i = 0; i < kKR; ++i)
#pragma GCC unroll 16
    for (int c = 0; c < NV; ++c) _mm512_storeu_ps(ST + (j0 + i) * TQp + r0 + 16 * c, acc[i][c]);
}

// 32-query chunks: a [D][32] QT chunk (16 KB at D = 128) stays in L1 while the keys stream.
template <bool BF16>
RA_AVX512BF16 inline void qk_blocks(const float* QT, const void* const* krows, float* ST, int64_t nk, int64_t TQp,
                                    int64_t D) {
  const int64_t steps = BF16 ? D / 2 : D;
  for (int64_t r0 = 0; r0 < TQp; r0 += 32) {
    for (int64_t j0 = 0; j0 < nk; j0 += kKR) {
      if (TQp - r0 >= 32) {
        qk_tile<2, BF16>(QT, krows, ST, j0, r0, TQp, steps);
      } else {
        qk_tile<1, BF16>(QT, krows, ST, j0, r0, TQp, steps);
      }
    }
  }
}

RA_AVX512BF16 void qk_avx512_bf16(const float* QT, const void* const* kr, float* ST, int64_t nk, int64_t TQp,
                                  int64_t D) {
  qk_blocks<true>(QT, kr, ST, nk, TQp, D);
}
// Shares qk_tile's attribute (one template for both key formats); the fp32 instantiation has no
// BF16 intrinsic and GCC emits BF16 instructions only for them / __bf16 conversions.
RA_AVX512BF16 void qk_avx512_f32_impl(const float* QT, const void* const* kr, float* ST, int64_t nk, int64_t TQp,
                                      int64_t D) {
  qk_blocks<false>(QT, kr, ST, nk, TQp, D);
}

// Softmax over the keys of the block, 16 queries per vector: no horizontal reductions.
RA_AVX512 void softmax_avx512(float* ST, float* m, float* l, float* O, int64_t rows, int64_t nk, int64_t TQp,
                              int64_t Dp, float scale) {
  alignas(64) float alpha[kMaxTQ];
  const __m512 vscale = _mm512_set1_ps(scale);
  for (int64_t r0 = 0; r0 < rows; r0 += 16) {
    const __m512 m_old = _mm512_loadu_ps(m + r0);
    __m512 mx = m_old, sum = _mm512_setzero_ps();
    for (int64_t j = 0; j < nk; ++j) mx = _mm512_max_ps(mx, _mm512_mul_ps(_mm512_loadu_ps(ST + j * TQp + r0), vscale));
    for (int64_t j = 0; j < nk; ++j) {
      const __m512 p = exp2_ps(_mm512_sub_ps(_mm512_mul_ps(_mm512_loadu_ps(ST + j * TQp + r0), vscale), mx));
      _mm512_storeu_ps(ST + j * TQp + r0, p);
      sum = _mm512_add_ps(sum, p);
    }
    const __m512 a = exp2_ps(_mm512_sub_ps(m_old, mx));  // 0 on the first block (m = -inf)
    _mm512_storeu_ps(alpha + r0, a);
    _mm512_storeu_ps(l + r0, _mm512_fmadd_ps(_mm512_loadu_ps(l + r0), a, sum));
    _mm512_storeu_ps(m + r0, mx);
  }
  rescale_rows(O, alpha, rows, Dp);
}

// kMR query rows x NV vectors of O in registers; per step one value row chunk and kMR
// broadcasts of P. A step is one key (fp32 P and V: FMA) or, with PAIRS, two consecutive keys as
// bf16 pairs (vdpbf16ps adds both exact products in fp32); the rows are 32-bit either way.
template <int NV, bool PAIRS>
RA_AVX512BF16 inline void pv_tile(const uint32_t* P, const uint32_t* V, float* O, int64_t r0, int64_t c0,
                                  int64_t steps, int64_t TQp, int64_t Dp, __mmask16 last) {
  __m512 acc[kMR][NV];
#pragma GCC unroll 16
  for (int64_t i = 0; i < kMR; ++i)
#pragma GCC unroll 16
    for (int c = 0; c < NV; ++c) acc[i][c] = _mm512_loadu_ps(O + (r0 + i) * Dp + c0 + 16 * c);
  for (int64_t j = 0; j < steps; ++j) {
    __m512i v[NV];
#pragma GCC unroll 16
    for (int c = 0; c < NV; ++c) {
      const __mmask16 live = c == NV - 1 ? last : __mmask16(0xFFFF);
      v[c] = _mm512_maskz_loadu_epi32(live, V + j * Dp + c0 + 16 * c);
    }
#pragma GCC unroll 16
    for (int64_t i = 0; i < kMR; ++i) {
      const __m512i p = _mm512_set1_epi32(static_cast<int>(P[j * TQp + r0 + i]));
#pragma GCC unroll 16
      for (int c = 0; c < NV; ++c) {
        if constexpr (PAIRS) {
          acc[i][c] = _mm512_dpbf16_ps(acc[i][c], (__m512bh)p, (__m512bh)v[c]);
        } else {
          acc[i][c] = _mm512_fmadd_ps(_mm512_castsi512_ps(p), _mm512_castsi512_ps(v[c]), acc[i][c]);
        }
      }
    }
  }
#pragma GCC unroll 16
  for (int64_t i = 0; i < kMR; ++i)
#pragma GCC unroll 16
    for (int c = 0; c < NV; ++c) _mm512_storeu_ps(O + (r0 + i) * Dp + c0 + 16 * c, acc[i][c]);
}

template <bool PAIRS>
RA_AVX512BF16 inline void pv_blocks(const void* P, const void* V, float* O, int64_t rows_p, int64_t steps,
                                    int64_t TQp, int64_t D, int64_t Dp) {
  const auto* PT = static_cast<const uint32_t*>(P);
  const auto* VR = static_cast<const uint32_t*>(V);
  for (int64_t c0 = 0; c0 < D; c0 += 64) {
    const int64_t nv = std::min<int64_t>(4, (D - c0 + 15) / 16), tail = (D - c0) - 16 * (nv - 1);
    const __mmask16 last = tail >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << tail) - 1u);
    for (int64_t r0 = 0; r0 < rows_p; r0 += kMR) {
      switch (nv) {
        case 1: pv_tile<1, PAIRS>(PT, VR, O, r0, c0, steps, TQp, Dp, last); break;
        case 2: pv_tile<2, PAIRS>(PT, VR, O, r0, c0, steps, TQp, Dp, last); break;
        case 3: pv_tile<3, PAIRS>(PT, VR, O, r0, c0, steps, TQp, Dp, last); break;
        default: pv_tile<4, PAIRS>(PT, VR, O, r0, c0, steps, TQp, Dp, last); break;
      }
    }
  }
}

// The fp32 instantiation emits no BF16 instruction (as qk_avx512_f32_impl).
RA_AVX512BF16 void pv_avx512(const void* P, const void* V, float* O, int64_t rows_p, int64_t nk, int64_t TQp,
                             int64_t D, int64_t Dp) {
  pv_blocks<false>(P, V, O, rows_p, nk, TQp, D, Dp);
}

RA_AVX512BF16 void pv_pairs_avx512_bf16(const void* P, const void* V, float* O, int64_t rows_p, int64_t np,
                                        int64_t TQp, int64_t D, int64_t Dp) {
  pv_blocks<true>(P, V, O, rows_p, np, TQp, D, Dp);
}
#pragma GCC diagnostic pop
#endif  // LIVEAVATAR_RT_RA_AVX512

}  // namespace

LIVEAVATAR_RT_ISA_CLONES
void pack_p_pairs(const float* ST, uint32_t* PP, int64_t nk, int64_t TQp) {
  for (int64_t j = 0; j < nk; j += 2) {
    const float* lo = ST + j * TQp;
    const float* hi = j + 1 < nk ? ST + (j + 1) * TQp : nullptr;
    uint32_t* dst = PP + (j / 2) * TQp;
    if (hi == nullptr) {
      for (int64_t r = 0; r < TQp; ++r) dst[r] = float_to_bf16_bits(lo[r]);
    } else {
      for (int64_t r = 0; r < TQp; ++r)
        dst[r] = uint32_t(float_to_bf16_bits(lo[r])) | uint32_t(float_to_bf16_bits(hi[r])) << 16;
    }
  }
}

int ra_best_isa() {
#ifdef LIVEAVATAR_RT_RA_AVX512
  static const int best = [] {
    __builtin_cpu_init();
    if (!avx512_supported()) return int(kIsaPortable);
    if (!avx512bf16_supported()) return int(kIsaAvx512);
    return int(ra_amx_supported() ? kIsaAmx : kIsaAvx512Bf16);
  }();
  return best;
#else
  return kIsaPortable;
#endif
}

const RaKernels& ra_kernels(int isa) {
  static const RaKernels portable{false, qk_portable, softmax_portable, pv_portable, nullptr};
#ifdef LIVEAVATAR_RT_RA_AVX512
  static const RaKernels avx512{false, qk_avx512_f32_impl, softmax_avx512, pv_avx512, nullptr};
  static const RaKernels avx512_bf16{true, qk_avx512_bf16, softmax_avx512, pv_avx512, pv_pairs_avx512_bf16};
  if (isa == kIsaAvx512Bf16) return avx512_bf16;
  if (isa == kIsaAvx512) return avx512;
#endif
  return portable;
}

}  // namespace liveavatar_rt::cpu
