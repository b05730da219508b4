// rolling_attention's AMX level (kIsaAmx, declared in rolling_attention_kernels.h): bf16 inputs,
// S = Q K^T and O += P V as bf16 tile GEMMs (tdpbf16ps) with fp32 accumulation, the online
// softmax between them in fp32 on AVX-512. The task loop that drives them is run_tasks_amx in
// rolling_attention.cpp.
//
// Numerics (what is rounded where):
// - Q, K, V are the bf16 inputs themselves (the conditioning keys rotated first, see below). A
//   tile product adds exact bf16 x bf16 products in fp32, in the tile unit's own order: only the
//   summation order differs from the fp32 reference (as the AVX512-BF16 level's dot products).
// - Conditioning keys are rotated while packed, as rope_apply: float64 products and sums,
//   rounded to fp32, then to bf16 (round to nearest even): the scalar rotate_cond_key's exact
//   result, eight pairs per vector.
// - Softmax, per block of keys: the running max m per query in fp32 (max of the raw scores,
//   times log2(e)/sqrt(D): the same value as the max of the scaled scores), P = 2^(fp32(s *
//   scale) - m) by exp2_ps (0.7 ulp; the other levels' function), the sum l of the fp32 P
//   (in another order than the other levels), O and l rescaled by 2^(m_old - m_new).
// - P is rounded to bf16 before P V, as flash attention does on GPU and as the AVX512-BF16
//   level's pv_pairs path: vcvtne2ps2bf16, round to nearest even, except that a P below 2^-126
//   (an fp32 denormal: the key scores over 87 nats below the row's max) becomes 0. V already is bf16.
// - O accumulates in fp32; out = O * (1 / l) rounded once to bf16 (round to nearest even).
//
// Tiles: 8 registers of 16 rows x 64 bytes, one fixed configuration; the GEMMs are 2 x 2 tile
// blocks (4 accumulators, 2 A and 2 B tiles per k step). Every operand is stored tile by tile
// (1 KB contiguous, see the header), so a tile load is one contiguous read. Linux hands a
// process the tile data state only on request (arch_prctl ARCH_REQ_XCOMP_PERM): asked once in
// ra_amx_supported(); without it (old kernel, or a hypervisor hiding AMX) the level is absent.
#include "cpu/rolling_attention_kernels.h"
#include "cpu/avx512.h"

#include <algorithm>
#include <cstring>

// AMX intrinsics: GCC >= 11, Clang >= 12; Linux for the tile-state request.
#if defined(LIVEAVATAR_RT_RA_AVX512) && defined(__linux__) && \
    ((defined(__clang__) && __clang_major__ >= 12) || (!defined(__clang__) && __GNUC__ >= 11))
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#define LIVEAVATAR_RT_RA_AMX 1
#endif

namespace liveavatar_rt::cpu {

#ifdef LIVEAVATAR_RT_RA_AMX
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#define RA_AMX __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,avx512bf16,amx-tile,amx-bf16")))

namespace {

constexpr int kArchReqXcompPerm = 0x1023;  // arch_prctl codes (asm/prctl.h), XTILEDATA's state bit
constexpr int kXfeatureXtiledata = 18;

struct alignas(64) TileConfig {
  uint8_t palette, start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

inline __mmask32 mask32(int64_t n) {
  return n >= 32 ? __mmask32(0xFFFFFFFFu) : n <= 0 ? __mmask32(0) : __mmask32((1u << n) - 1u);
}

// 16 x 16 32-bit transpose in registers: r[i] = row i in, column i out.
RA_AMX inline void transpose16(__m512i r[16]) {
  __m512i a[16], b[16];
  for (int i = 0; i < 8; ++i) {
    a[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    a[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {  // b[4i + k], lane L: column 4L + k of rows 4i..4i+3
    b[4 * i] = _mm512_unpacklo_epi64(a[4 * i], a[4 * i + 2]);
    b[4 * i + 1] = _mm512_unpackhi_epi64(a[4 * i], a[4 * i + 2]);
    b[4 * i + 2] = _mm512_unpacklo_epi64(a[4 * i + 1], a[4 * i + 3]);
    b[4 * i + 3] = _mm512_unpackhi_epi64(a[4 * i + 1], a[4 * i + 3]);
  }
  for (int k = 0; k < 4; ++k) {  // a[k]: lanes of columns k, 8+k; a[4+k]: columns 4+k, 12+k (rows 0-7 / 8-15)
    a[k] = _mm512_shuffle_i32x4(b[k], b[4 + k], 0x88);
    a[4 + k] = _mm512_shuffle_i32x4(b[k], b[4 + k], 0xDD);
    a[8 + k] = _mm512_shuffle_i32x4(b[8 + k], b[12 + k], 0x88);
    a[12 + k] = _mm512_shuffle_i32x4(b[8 + k], b[12 + k], 0xDD);
  }
  for (int k = 0; k < 4; ++k) {
    r[k] = _mm512_shuffle_i32x4(a[k], a[8 + k], 0x88);
    r[8 + k] = _mm512_shuffle_i32x4(a[k], a[8 + k], 0xDD);
    r[4 + k] = _mm512_shuffle_i32x4(a[4 + k], a[12 + k], 0x88);
    r[12 + k] = _mm512_shuffle_i32x4(a[4 + k], a[12 + k], 0xDD);
  }
}

// Lane i = the maximum (MAX) or sum of v[i]'s 16 lanes: a shuffle tree, 30 operations for 16
// vectors. Its lanes come out in the order kFrom (an involution), so the vectors go in that order.
template <bool MAX>
RA_AMX inline __m512 combine(__m512 a, __m512 b) {
  return MAX ? _mm512_max_ps(a, b) : _mm512_add_ps(a, b);
}

template <bool MAX>
RA_AMX inline __m512 reduce16(const __m512 v[16]) {
  constexpr int kFrom[16] = {0, 2, 1, 3, 8, 10, 9, 11, 4, 6, 5, 7, 12, 14, 13, 15};
  __m512 x[8], y[4], z[2];
  for (int i = 0; i < 8; ++i) {
    const __m512 a = v[kFrom[i]], b = v[kFrom[i + 8]];
    x[i] = combine<MAX>(_mm512_shuffle_f32x4(a, b, 0x44), _mm512_shuffle_f32x4(a, b, 0xEE));
  }
  for (int i = 0; i < 4; ++i)
    y[i] = combine<MAX>(_mm512_shuffle_f32x4(x[i], x[i + 4], 0x88), _mm512_shuffle_f32x4(x[i], x[i + 4], 0xDD));
  for (int j = 0; j < 2; ++j) z[j] = combine<MAX>(_mm512_shuffle_ps(y[j], y[j + 2], 0x44), _mm512_shuffle_ps(y[j], y[j + 2], 0xEE));
  return combine<MAX>(_mm512_shuffle_ps(z[0], z[1], 0x88), _mm512_shuffle_ps(z[0], z[1], 0xDD));
}

// C += A B over row blocks [rb, rb + R) (R = 1 or 2) and 32 output columns at cb, cb + 1, as
// bf16 tiles with fp32 accumulation: A [rows][nkb] tiles of 16 x 32 bf16 (512 B apart), B [nkb][ncb]
// tiles in VNNI pairs, C [rows][ncb] tiles of 16 x 16 fp32 (256 floats apart). ACCUMULATE false
// starts C from 0 (S = Q K^T), true from its contents (O += P V).
template <int R, bool ACCUMULATE>
RA_AMX inline void tile_gemm(const uint16_t* A, const uint32_t* B, float* C, int64_t rb, int64_t cb, int64_t ncb,
                             int64_t nkb) {
  if constexpr (ACCUMULATE) {
    _tile_loadd(0, C + (rb * ncb + cb) * 256, 64);
    _tile_loadd(1, C + (rb * ncb + cb + 1) * 256, 64);
  } else {
    _tile_zero(0);
    _tile_zero(1);
  }
  if constexpr (R == 2) {
    if constexpr (ACCUMULATE) {
      _tile_loadd(2, C + ((rb + 1) * ncb + cb) * 256, 64);
      _tile_loadd(3, C + ((rb + 1) * ncb + cb + 1) * 256, 64);
    } else {
      _tile_zero(2);
      _tile_zero(3);
    }
  }
  for (int64_t kb = 0; kb < nkb; ++kb) {
    _tile_loadd(6, B + (kb * ncb + cb) * 256, 64);
    _tile_loadd(7, B + (kb * ncb + cb + 1) * 256, 64);
    _tile_loadd(4, A + (rb * nkb + kb) * 512, 64);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    if constexpr (R == 2) {
      _tile_loadd(5, A + ((rb + 1) * nkb + kb) * 512, 64);
      _tile_dpbf16ps(2, 5, 6);
      _tile_dpbf16ps(3, 5, 7);
    }
  }
  _tile_stored(0, C + (rb * ncb + cb) * 256, 64);
  _tile_stored(1, C + (rb * ncb + cb + 1) * 256, 64);
  if constexpr (R == 2) {
    _tile_stored(2, C + ((rb + 1) * ncb + cb) * 256, 64);
    _tile_stored(3, C + ((rb + 1) * ncb + cb + 1) * 256, 64);
  }
}

}  // namespace

bool ra_amx_supported() {
  static const bool ok = [] {
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
    const bool amx_bf16 = (d >> 22) & 1u, amx_tile = (d >> 24) & 1u;
    __builtin_cpu_init();
    if (!(amx_bf16 && amx_tile && __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512bw") &&
          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("fma")))
      return false;
    // Granted once per process (idempotent; oneDNN asks the same when torch runs AMX GEMMs).
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return ok;
}

// tmm0..7: 16 rows of 64 bytes. A static object: GCC 12's _tile_loadconfig tells the compiler
// it reads only the first 8 bytes, so a local's other fields could be left unwritten.
const TileConfig kTileConfig = {1, 0, {}, {64, 64, 64, 64, 64, 64, 64, 64}, {16, 16, 16, 16, 16, 16, 16, 16}};

RA_AMX void amx_tiles_begin() { _tile_loadconfig(&kTileConfig); }

RA_AMX void amx_tiles_end() { _tile_release(); }

RA_AMX void amx_pack_q_row(const uint16_t* q, int64_t r, int64_t D, int64_t Dk, uint16_t* Qb) {
  const int64_t nkb = Dk / 32;
  uint16_t* dst = Qb + (r / 16) * nkb * 512 + (r % 16) * 32;
  for (int64_t kb = 0; kb < nkb; ++kb) {
    const __m512i x = q ? _mm512_maskz_loadu_epi16(mask32(D - kb * 32), q + kb * 32) : _mm512_setzero_si512();
    _mm512_storeu_si512(dst + kb * 512, x);
  }
}

RA_AMX void amx_pack_k16(const uint16_t* const* krows, int64_t n, int64_t jb, int64_t njb, int64_t D, int64_t Dk,
                         uint32_t* Kb) {
  const int64_t nkb = Dk / 32, pairs = D / 2;
  for (int64_t kb = 0; kb < nkb; ++kb) {
    const __mmask16 live = mask16(pairs - kb * 16);
    __m512i r[16];
    for (int64_t i = 0; i < 16; ++i) r[i] = i < n ? _mm512_maskz_loadu_epi32(live, krows[i] + kb * 32) : _mm512_setzero_si512();
    transpose16(r);
    uint32_t* dst = Kb + (kb * njb + jb) * 256;
    for (int64_t t = 0; t < 16; ++t) _mm512_storeu_si512(dst + t * 16, r[t]);
  }
}

RA_AMX void amx_pack_v_pair(const uint16_t* lo, const uint16_t* hi, int64_t p, int64_t D, int64_t Dk, uint32_t* Vb) {
  const int64_t ndb = Dk / 16;
  uint32_t* dst = Vb + (p / 16) * ndb * 256 + (p % 16) * 16;
  for (int64_t db = 0; db < ndb; ++db) {
    const __mmask16 live = mask16(D - db * 16);
    __m512i pair = _mm512_setzero_si512();
    if (lo != nullptr && live != 0) {
      pair = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(live, lo + db * 16));
      if (hi != nullptr)
        pair = _mm512_or_si512(pair, _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(live, hi + db * 16)), 16));
    }
    _mm512_storeu_si512(dst + db * 256, pair);
  }
}

// C (nrb x ncb blocks of 16 x 16 fp32) [+]= A B over nkb k steps, in 2 x 2 tile blocks (the
// last row block alone when nrb is odd; the column blocks come in pairs, see the header).
template <bool ACCUMULATE>
RA_AMX inline void tile_rows(const uint16_t* A, const uint32_t* B, float* C, int64_t nrb, int64_t ncb, int64_t nkb) {
  for (int64_t rb = 0; rb < nrb; rb += 2) {
    for (int64_t cb = 0; cb < ncb; cb += 2) {
      if (rb + 1 < nrb) {
        tile_gemm<2, ACCUMULATE>(A, B, C, rb, cb, ncb, nkb);
      } else {
        tile_gemm<1, ACCUMULATE>(A, B, C, rb, cb, ncb, nkb);
      }
    }
  }
}

RA_AMX void amx_qk(const uint16_t* Qb, const uint32_t* Kb, float* Sb, int64_t nrb, int64_t nkp, int64_t Dk) {
  tile_rows<false>(Qb, Kb, Sb, nrb, nkp / 16, Dk / 32);  // S = Q K^T: key blocks of 16, k = D in pairs
}

RA_AMX void amx_pv(const uint16_t* Pb, const uint32_t* Vb, float* Ob, int64_t nrb, int64_t nkp, int64_t Dk) {
  tile_rows<true>(Pb, Vb, Ob, nrb, Dk / 16, nkp / 32);  // O += P V: dim blocks of 16, k = keys in pairs
}

RA_AMX void amx_softmax(const float* Sb, uint16_t* Pb, float* m, float* l, float* Ob, int64_t nrb, int64_t nk,
                        int64_t nkp, int64_t Dk, float scale) {
  // Padded queries (zero rows of Qb: scores 0) run as the others: finite P, an unused output.
  const int64_t njb = nkp / 16, ndb = Dk / 16, full = nk / 16;  // key blocks of 16, all keys live below `full`
  const __m512 vscale = _mm512_set1_ps(scale);
  alignas(64) float mx[16], alpha[16];
  __m512 acc[16];
  for (int64_t rb = 0; rb < nrb; ++rb) {  // 16 queries at a time: their max, alpha, sum in one vector each
    const float* S = Sb + rb * njb * 256;  // query rr, keys 16jb..16jb+15 at S + jb * 256 + rr * 16
    uint16_t* P = Pb + rb * njb * 256;     // query rr, keys 32c..32c+31 at P + c * 512 + rr * 32
    // max of the raw scores, then scaled: the same as the max of the scaled ones (scale > 0)
    for (int rr = 0; rr < 16; ++rr) {
      __m512 v = _mm512_set1_ps(-__builtin_inff());
      for (int64_t jb = 0; jb < full; ++jb) v = _mm512_max_ps(v, _mm512_loadu_ps(S + jb * 256 + rr * 16));
      if (full < njb) v = _mm512_mask_max_ps(v, mask16(nk - full * 16), v, _mm512_loadu_ps(S + full * 256 + rr * 16));
      acc[rr] = v;
    }
    const __m512 m_old = _mm512_loadu_ps(m + rb * 16);
    const __m512 m_new = _mm512_max_ps(m_old, _mm512_mul_ps(reduce16<true>(acc), vscale));
    const __m512 a = exp2_ps(_mm512_sub_ps(m_old, m_new));  // 0 on the first block (m = -inf)
    _mm512_store_ps(mx, m_new);
    _mm512_store_ps(alpha, a);
    _mm512_storeu_ps(m + rb * 16, m_new);
    for (int rr = 0; rr < 16; ++rr) {
      const __m512 vm = _mm512_set1_ps(mx[rr]);
      const float* s = S + rr * 16;
      uint16_t* p = P + rr * 32;
      __m512 sum = _mm512_setzero_ps();
      for (int64_t jb = 0; jb < njb; jb += 2) {  // two blocks of 16 keys: one 64-byte row of Pb
        __m512 e0 = exp2_ps(_mm512_sub_ps(_mm512_mul_ps(_mm512_loadu_ps(s + jb * 256), vscale), vm));
        __m512 e1 = exp2_ps(_mm512_sub_ps(_mm512_mul_ps(_mm512_loadu_ps(s + (jb + 1) * 256), vscale), vm));
        if (jb + 2 > full) {  // the tail: keys >= nk are 0
          e0 = _mm512_maskz_mov_ps(mask16(nk - jb * 16), e0);
          e1 = _mm512_maskz_mov_ps(mask16(nk - (jb + 1) * 16), e1);
        }
        sum = _mm512_add_ps(sum, _mm512_add_ps(e0, e1));
        _mm512_storeu_si512(p + (jb / 2) * 512, (__m512i)_mm512_cvtne2ps_pbh(e1, e0));
      }
      acc[rr] = sum;
    }
    _mm512_storeu_ps(l + rb * 16, _mm512_add_ps(_mm512_mul_ps(_mm512_loadu_ps(l + rb * 16), a), reduce16<false>(acc)));
    for (int rr = 0; rr < 16; ++rr) {
      if (alpha[rr] == 1.f) continue;
      const __m512 va = _mm512_set1_ps(alpha[rr]);
      float* o = Ob + rb * ndb * 256 + rr * 16;
      for (int64_t db = 0; db < ndb; ++db) _mm512_storeu_ps(o + db * 256, _mm512_mul_ps(_mm512_loadu_ps(o + db * 256), va));
    }
  }
}

RA_AMX void amx_store_row(const float* Ob, int64_t r, int64_t D, int64_t Dk, float inv, uint16_t* dst) {
  const int64_t ndb = Dk / 16;
  const float* o = Ob + (r / 16) * ndb * 256 + (r % 16) * 16;
  const __m512 vinv = _mm512_set1_ps(inv);
  for (int64_t db = 0; db * 16 < D; ++db) {
    const __m256i h = bf16_rne(_mm512_mul_ps(_mm512_loadu_ps(o + db * 256), vinv));
    _mm256_mask_storeu_epi16(dst + db * 16, mask16(D - db * 16), h);
  }
}

RA_AMX void amx_rope_row(const uint16_t* src, const float* cos, const float* sin, int64_t D, uint16_t* dst) {
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 0, 0, 0, 0, 0, 0, 0, 0);
  const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 0, 0, 0, 0, 0, 0, 0, 0);
  const __m512i zip = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  for (int64_t i = 0; i < D / 2; i += 8) {  // pairs i..i+7: dims 2i..2i+15
    const __mmask16 live = mask16(D - 2 * i);
    const __mmask8 half = static_cast<__mmask8>(mask16(D / 2 - i));
    const __m512 x = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(live, src + 2 * i)), 16));
    const __m512d x0 = _mm512_cvtps_pd(_mm512_castps512_ps256(_mm512_permutexvar_ps(even, x)));
    const __m512d x1 = _mm512_cvtps_pd(_mm512_castps512_ps256(_mm512_permutexvar_ps(odd, x)));
    const __m512d c = _mm512_cvtps_pd(_mm256_maskz_loadu_ps(half, cos + i));
    const __m512d s = _mm512_cvtps_pd(_mm256_maskz_loadu_ps(half, sin + i));
    const __m256 y0 = _mm512_cvtpd_ps(_mm512_sub_pd(_mm512_mul_pd(x0, c), _mm512_mul_pd(x1, s)));
    const __m256 y1 = _mm512_cvtpd_ps(_mm512_add_pd(_mm512_mul_pd(x0, s), _mm512_mul_pd(x1, c)));
    const __m512 y = _mm512_permutex2var_ps(_mm512_castps256_ps512(y0), zip, _mm512_castps256_ps512(y1));
    _mm256_mask_storeu_epi16(dst + 2 * i, live, bf16_rne(y));
  }
}

#pragma GCC diagnostic pop
#else  // no AMX level on this platform: never selected (ra_amx_supported() is false)

bool ra_amx_supported() { return false; }
void amx_tiles_begin() {}
void amx_tiles_end() {}
void amx_pack_q_row(const uint16_t*, int64_t, int64_t, int64_t, uint16_t*) {}
void amx_pack_k16(const uint16_t* const*, int64_t, int64_t, int64_t, int64_t, int64_t, uint32_t*) {}
void amx_pack_v_pair(const uint16_t*, const uint16_t*, int64_t, int64_t, int64_t, uint32_t*) {}
void amx_qk(const uint16_t*, const uint32_t*, float*, int64_t, int64_t, int64_t) {}
void amx_softmax(const float*, uint16_t*, float*, float*, float*, int64_t, int64_t, int64_t, int64_t, float) {}
void amx_pv(const uint16_t*, const uint32_t*, float*, int64_t, int64_t, int64_t) {}
void amx_store_row(const float*, int64_t, int64_t, int64_t, float, uint16_t*) {}
void amx_rope_row(const uint16_t*, const float*, const float*, int64_t, uint16_t*) {}

#endif  // LIVEAVATAR_RT_RA_AMX

}  // namespace liveavatar_rt::cpu
