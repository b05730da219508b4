// rolling_attention on CPU: one streaming block's queries over [ring[:valid] ; rope(cond_k)]
// (liveavatar_rt/ops/rolling_attention.py), flash-attention style, fp32 softmax/accumulation.
//
// Tasks are (batch, head, query tile of <= 256) under at::parallel_for. A task keeps its
// query tile transposed (QT: [D][TQ], queries in vector lanes) and streams the keys in blocks
// of kTK: S^T = K QT, online softmax over keys (running max/sum per query lane, base 2 with
// log2(e)/sqrt(D) folded into the score scale), O += P V. A key block is gathered into two
// kTK-row buffers (its ring rows copied, its conditioning keys rotated there: float64 products
// rounded to fp32 then to the input dtype, exactly as rope_apply), so neither the [ring ; cond]
// concatenation nor a rotated copy of the conditioning keys is ever built.
//
// Vectorisation: an extension is compiled without CPU-capability flags, so at::vec would be
// its generic array form. The micro-kernels use AVX-512 intrinsics in functions with their own
// `target` attribute, chosen at run time (__builtin_cpu_supports); the portable kernels are
// plain loops (other CPUs; CTest checks them everywhere). bf16 inputs use AVX512-BF16 dot
// products for the scores where available: bf16 products are exact in fp32 and accumulate in
// fp32, so only the summation order differs. P and V stay fp32 (no rounding of P to bf16).
#include "cpu/cpu_utils.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cstdlib>
#include <limits>
#include <memory>
#include <type_traits>

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define LIVEAVATAR_RT_RA_AVX512 1
#endif

namespace liveavatar_rt {
namespace cpu {
namespace {

constexpr int64_t kTK = 64;      // keys per block
constexpr int64_t kMaxTQ = 256;  // queries per task: packing and K/V reads amortise over them
constexpr int64_t kKR = 8;       // keys per score micro-kernel step
constexpr int64_t kMR = 4;       // query rows per P V micro-kernel step
constexpr int64_t kAhead = 4;    // rows prefetched ahead while packing
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

enum Isa : int { kIsaPortable = 0, kIsaAvx512 = 1, kIsaAvx512Bf16 = 2 };

// One key block's kernels. qk: ST[j][r] = k_j . q_r for j < nk (key rows in the kernel's
// format: fp32, or bf16 for `bf16_keys`; QT [D][TQp] fp32, or [D/2][TQp] bf16 pairs).
// softmax: ST -> P in place, running max m / sum l per query, O rows rescaled.
// pv: O[r][0:D] += sum_j P[j][r] v_j (fp32 value rows) for r < rows_p.
struct RaKernels {
  bool bf16_keys;
  void (*qk)(const float* QT, const void* const* krows, float* ST, int64_t nk, int64_t TQp, int64_t D);
  void (*softmax)(float* ST, float* m, float* l, float* O, int64_t rows, int64_t nk, int64_t TQp, int64_t Dp,
                  float scale);
  void (*pv)(const float* PT, const float* const* vrows, float* O, int64_t rows_p, int64_t nk, int64_t TQp,
             int64_t D, int64_t Dp);
};

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

void pv_portable(const float* PT, const float* const* vrows, float* O, int64_t rows_p, int64_t nk, int64_t TQp,
                 int64_t D, int64_t Dp) {
  for (int64_t j = 0; j < nk; ++j) {
    for (int64_t r = 0; r < rows_p; ++r) {
      const float p = PT[j * TQp + r];
      for (int64_t d = 0; d < D; ++d) O[r * Dp + d] += p * vrows[j][d];
    }
  }
}

#ifdef LIVEAVATAR_RT_RA_AVX512
// GCC 12's own unmasked AVX-512 intrinsics trip -Wmaybe-uninitialized (GCC PR 105593).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
// ---- AVX-512 kernels (FMA: the summation order differs from torch's anyway) ---------------
#define RA_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma")))
#define RA_AVX512BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,avx512bf16")))

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

// kMR query rows x NV vectors of O in registers; per key one value row chunk, kMR broadcasts.
template <int NV>
RA_AVX512 inline void pv_tile(const float* PT, const float* const* vrows, float* O, int64_t r0, int64_t c0,
                              int64_t nk, int64_t TQp, int64_t Dp, __mmask16 last) {
  __m512 acc[kMR][NV];
#pragma GCC unroll 16
  for (int64_t i = 0; i < kMR; ++i)
#pragma GCC unroll 16
    for (int c = 0; c < NV; ++c) acc[i][c] = _mm512_loadu_ps(O + (r0 + i) * Dp + c0 + 16 * c);
  for (int64_t j = 0; j < nk; ++j) {
    __m512 v[NV];
#pragma GCC unroll 16
    for (int c = 0; c < NV; ++c) {
      const __mmask16 live = c == NV - 1 ? last : __mmask16(0xFFFF);
      v[c] = _mm512_maskz_loadu_ps(live, vrows[j] + c0 + 16 * c);
    }
#pragma GCC unroll 16
    for (int64_t i = 0; i < kMR; ++i) {
      const __m512 p = _mm512_set1_ps(PT[j * TQp + r0 + i]);
#pragma GCC unroll 16
      for (int c = 0; c < NV; ++c) acc[i][c] = _mm512_fmadd_ps(p, v[c], acc[i][c]);
    }
  }
#pragma GCC unroll 16
  for (int64_t i = 0; i < kMR; ++i)
#pragma GCC unroll 16
    for (int c = 0; c < NV; ++c) _mm512_storeu_ps(O + (r0 + i) * Dp + c0 + 16 * c, acc[i][c]);
}

RA_AVX512 void pv_avx512(const float* PT, const float* const* vrows, float* O, int64_t rows_p, int64_t nk,
                         int64_t TQp, int64_t D, int64_t Dp) {
  for (int64_t c0 = 0; c0 < D; c0 += 64) {
    const int64_t nv = std::min<int64_t>(4, (D - c0 + 15) / 16), tail = (D - c0) - 16 * (nv - 1);
    const __mmask16 last = tail >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << tail) - 1u);
    for (int64_t r0 = 0; r0 < rows_p; r0 += kMR) {
      switch (nv) {
        case 1: pv_tile<1>(PT, vrows, O, r0, c0, nk, TQp, Dp, last); break;
        case 2: pv_tile<2>(PT, vrows, O, r0, c0, nk, TQp, Dp, last); break;
        case 3: pv_tile<3>(PT, vrows, O, r0, c0, nk, TQp, Dp, last); break;
        default: pv_tile<4>(PT, vrows, O, r0, c0, nk, TQp, Dp, last); break;
      }
    }
  }
}
#pragma GCC diagnostic pop
#endif  // LIVEAVATAR_RT_RA_AVX512

int ra_best_isa() {
#ifdef LIVEAVATAR_RT_RA_AVX512
  static const int best = [] {
    __builtin_cpu_init();
    if (!(__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("fma")))
      return int(kIsaPortable);
    return int(__builtin_cpu_supports("avx512bf16") ? kIsaAvx512Bf16 : kIsaAvx512);
  }();
  return best;
#else
  return kIsaPortable;
#endif
}

const RaKernels& ra_kernels(int isa) {
  static const RaKernels portable{false, qk_portable, softmax_portable, pv_portable};
#ifdef LIVEAVATAR_RT_RA_AVX512
  static const RaKernels avx512{false, qk_avx512_f32_impl, softmax_avx512, pv_avx512};
  static const RaKernels avx512_bf16{true, qk_avx512_bf16, softmax_avx512, pv_avx512};
  if (isa == kIsaAvx512Bf16) return avx512_bf16;
  if (isa == kIsaAvx512) return avx512;
#endif
  return portable;
}

struct View4 {  // a [B, L, H, D] tensor with a contiguous last dim: element strides
  const void* p;
  int64_t sb, sl, sh;
  template <typename T>
  const T* row(int64_t b, int64_t l, int64_t h) const {
    return static_cast<const T*>(p) + b * sb + l * sl + h * sh;
  }
};

struct RaArgs {
  View4 q, rk, rv, ck, cv;
  const float* cos;  // [Lc, D/2] contiguous
  const float* sin;
  void* out;  // contiguous [B, Lq, H, D]
  int64_t Lq, H, D, Dp, valid, Lc, TQ, n_qt;
  float scale_log2e;
};

// A 64-byte aligned, zeroed fp32 buffer, allocated once per thread chunk.
struct Scratch {
  struct Free {
    void operator()(float* p) const { std::free(p); }
  };
  std::unique_ptr<float, Free> ptr;
  explicit Scratch(int64_t n) : ptr(static_cast<float*>(std::aligned_alloc(64, (n * 4 + 63) / 64 * 64))) {
    TORCH_CHECK(ptr != nullptr, "liveavatar_rt::rolling_attention: out of memory for scratch");
    std::fill(ptr.get(), ptr.get() + n, 0.f);
  }
  float* get() const { return ptr.get(); }
};

// Query tiles of one head split evenly (Lq = 96 -> one tile; 396 -> 2 x 200), 16-aligned.
int64_t query_tile(int64_t Lq) {
  const int64_t n = (Lq + kMaxTQ - 1) / kMaxTQ;
  return ((Lq + n - 1) / n + 15) / 16 * 16;
}

// Conditioning key c of (b, h) rotated at its sink position into dst (as T's values).
template <typename T, typename Out>
void rotate_cond_key(const RaArgs& a, int64_t b, int64_t h, int64_t c, Out* dst) {
  const T* src = a.ck.row<T>(b, c, h);
  const float* cs = a.cos + c * (a.D / 2);
  const float* sn = a.sin + c * (a.D / 2);
  const T* tag = nullptr;
  for (int64_t i = 0; i < a.D / 2; ++i) {
    const double x0 = load_float(src, 2 * i), x1 = load_float(src, 2 * i + 1);
    store_float(dst, 2 * i, round_to(static_cast<float>(x0 * cs[i] - x1 * sn[i]), tag));
    store_float(dst, 2 * i + 1, round_to(static_cast<float>(x0 * sn[i] + x1 * cs[i]), tag));
  }
}

// Rows of one head are H * D elements apart (a page or more at the 14B size), so the hardware
// prefetchers do not follow them: fetch a row a few iterations ahead.
template <typename T>
inline void prefetch_row(const T* row, int64_t D) {
  for (int64_t i = 0; i < D * int64_t(sizeof(T)); i += 64) __builtin_prefetch(reinterpret_cast<const char*>(row) + i);
}

// bf16 -> fp32 rows (cloned per ISA so the conversion vectorises).
LIVEAVATAR_RT_ISA_CLONES
void bf16_to_float(const c10::BFloat16* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = load_float(src, i);
}

template <typename T>
void run_tasks(const RaArgs& a, const RaKernels& kern, int64_t t0, int64_t t1) {
  constexpr bool kBf16 = std::is_same_v<T, c10::BFloat16>;
  const bool pairs = kern.bf16_keys;                 // only chosen for bf16 inputs
  const bool keys_in_place = !kBf16 || pairs;        // ring rows already in the kernel's key format
  const int64_t D = a.D, Dp = a.Dp, TQp = a.TQ, N = a.valid + a.Lc;
  Scratch qt(Dp * TQp), st(kTK * TQp), o(TQp * Dp), m(TQp), l(TQp), kbuf(kTK * Dp), vbuf(kTK * Dp);
  const void* krows[kTK + kKR];
  const float* vrows[kTK];
  for (int64_t task = t0; task < t1; ++task) {
    const int64_t qi = task % a.n_qt, h = (task / a.n_qt) % a.H, b = task / a.n_qt / a.H;
    const int64_t i0 = qi * a.TQ, rows = std::min(a.TQ, a.Lq - i0), rows_p = (rows + kMR - 1) / kMR * kMR;
    // QT: [D][TQp] fp32, or [D/2][TQp] bf16 pairs (low half = even dim); padded queries are 0.
    auto* qt2 = reinterpret_cast<uint32_t*>(qt.get());
    for (int64_t r = 0; r < TQp; ++r) {
      const T* q = r < rows ? a.q.row<T>(b, i0 + r, h) : nullptr;
      if (r + kAhead < rows) prefetch_row(a.q.row<T>(b, i0 + r + kAhead, h), D);
      for (int64_t d = 0; d < D; d += 2) {
        const float q0 = q ? load_float(q, d) : 0.f, q1 = q ? load_float(q, d + 1) : 0.f;
        if (pairs) {
          qt2[d / 2 * TQp + r] = uint32_t(float_to_bf16_bits(q0)) | uint32_t(float_to_bf16_bits(q1)) << 16;
        } else {
          qt.get()[d * TQp + r] = q0, qt.get()[(d + 1) * TQp + r] = q1;
        }
      }
    }
    std::fill(m.get(), m.get() + TQp, kNegInf);
    std::fill(l.get(), l.get() + TQp, 0.f);
    std::fill(o.get(), o.get() + TQp * Dp, 0.f);
    for (int64_t kb = 0; kb < N; kb += kTK) {
      const int64_t nk = std::min(kTK, N - kb);
      for (int64_t j = 0; j < nk; ++j) {
        const int64_t g = kb + j, ga = g + kAhead;
        if (ga < N) {
          prefetch_row(ga < a.valid ? a.rk.row<T>(b, ga, h) : a.ck.row<T>(b, ga - a.valid, h), D);
          prefetch_row(ga < a.valid ? a.rv.row<T>(b, ga, h) : a.cv.row<T>(b, ga - a.valid, h), D);
        }
        float* kf = kbuf.get() + j * Dp;
        auto* kh = reinterpret_cast<c10::BFloat16*>(kf);
        if (g < a.valid && keys_in_place) {  // copied: rows H * D apart cost TLB misses in the kernels
          std::memcpy(kf, a.rk.row<T>(b, g, h), D * sizeof(T));
        } else if (g < a.valid) {  // bf16 ring keys for an fp32 kernel
          bf16_to_float(reinterpret_cast<const c10::BFloat16*>(a.rk.row<T>(b, g, h)), kf, D);
        } else if (pairs) {
          rotate_cond_key<T>(a, b, h, g - a.valid, kh);
        } else {
          rotate_cond_key<T>(a, b, h, g - a.valid, kf);
        }
        krows[j] = kf;
        const T* v = g < a.valid ? a.rv.row<T>(b, g, h) : a.cv.row<T>(b, g - a.valid, h);
        float* vf = vbuf.get() + j * Dp;
        if constexpr (kBf16) {
          bf16_to_float(v, vf, D);
        } else {
          std::memcpy(vf, v, D * sizeof(float));
        }
        vrows[j] = vf;
      }
      for (int64_t j = nk; j < kTK + kKR; ++j) krows[j] = krows[nk - 1];  // whole kKR groups; unused
      kern.qk(qt.get(), krows, st.get(), nk, TQp, D);
      kern.softmax(st.get(), m.get(), l.get(), o.get(), rows, nk, TQp, Dp, a.scale_log2e);
      kern.pv(st.get(), vrows, o.get(), rows_p, nk, TQp, D, Dp);
    }
    for (int64_t r = 0; r < rows; ++r) {
      T* dst = static_cast<T*>(a.out) + ((b * a.Lq + i0 + r) * a.H + h) * D;
      const float inv = 1.f / l.get()[r];
      for (int64_t d = 0; d < D; ++d) store_float(dst, d, o.get()[r * Dp + d] * inv);
    }
  }
}

View4 view4(const at::Tensor& t) { return View4{t.data_ptr(), t.stride(0), t.stride(1), t.stride(2)}; }

// Rows need a contiguous last dim (other strides are addressed directly); else a copy.
at::Tensor rows_contiguous(const at::Tensor& t) { return t.stride(-1) == 1 ? t : t.contiguous(); }

void check(const at::Tensor& q, const at::Tensor& rk, const at::Tensor& rv, int64_t valid, const at::Tensor& ck,
           const at::Tensor& cv, const at::Tensor& cos, const at::Tensor& sin) {
  const char* op = "liveavatar_rt::rolling_attention";
  for (const at::Tensor* t : {&q, &rk, &rv, &ck, &cv, &cos, &sin})
    TORCH_CHECK(t->device().is_cpu(), op, " (CPU kernel): every input must be on CPU, got ", t->device());
  TORCH_CHECK(is_fp32_or_bf16(q.scalar_type()), op, ": q must be float32 or bfloat16, got ", q.scalar_type());
  TORCH_CHECK(q.dim() == 4, op, ": q must be [B, Lq, H, D], got ", q.sizes());
  for (const at::Tensor* t : {&rk, &rv, &ck, &cv}) {
    TORCH_CHECK(t->scalar_type() == q.scalar_type(), op, ": k/v dtype ", t->scalar_type(), " != q dtype ",
                q.scalar_type());
    TORCH_CHECK(t->dim() == 4 && t->size(0) == q.size(0) && t->size(2) == q.size(2) && t->size(3) == q.size(3), op,
                ": k/v must be [B, L, H, D] with q's B, H, D (", q.sizes(), "), got ", t->sizes());
  }
  const int64_t D = q.size(3);
  TORCH_CHECK(D % 2 == 0, op, ": head dim must be even (RoPE pairs), got ", D);
  TORCH_CHECK(rk.sizes() == rv.sizes() && ck.sizes() == cv.sizes(), op, ": ring_k/ring_v and cond_k/cond_v ",
              "must have equal shapes, got ", rk.sizes(), " ", rv.sizes(), " ", ck.sizes(), " ", cv.sizes());
  TORCH_CHECK(0 <= valid && valid <= rk.size(1), op, ": valid must be in [0, cap = ", rk.size(1), "], got ", valid);
  TORCH_CHECK(valid + ck.size(1) > 0, op, ": no keys (valid == 0 and Lc == 0)");
  for (const at::Tensor* t : {&cos, &sin})
    TORCH_CHECK(t->scalar_type() == at::kFloat && t->dim() == 2 && t->size(0) == ck.size(1) && t->size(1) == D / 2,
                op, ": cond_cos/cond_sin must be float32 [Lc, D/2] = [", ck.size(1), ", ", D / 2, "], got ",
                t->scalar_type(), " ", t->sizes());
}

}  // namespace
}  // namespace cpu

int64_t rolling_attention_best_isa() { return cpu::ra_best_isa(); }

at::Tensor rolling_attention_cpu_isa(const at::Tensor& q_in, const at::Tensor& ring_k, const at::Tensor& ring_v,
                                     int64_t valid, const at::Tensor& cond_k, const at::Tensor& cond_v,
                                     const at::Tensor& cond_cos, const at::Tensor& cond_sin, int64_t isa) {
  cpu::check(q_in, ring_k, ring_v, valid, cond_k, cond_v, cond_cos, cond_sin);
  const at::Tensor q = cpu::rows_contiguous(q_in), rk = cpu::rows_contiguous(ring_k), rv = cpu::rows_contiguous(ring_v);
  const at::Tensor ck = cpu::rows_contiguous(cond_k), cv = cpu::rows_contiguous(cond_v);
  const at::Tensor cs = cond_cos.contiguous(), sn = cond_sin.contiguous();
  at::Tensor out = at::empty(q.sizes(), q.options().memory_format(at::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out;

  cpu::RaArgs a{};
  a.q = cpu::view4(q), a.rk = cpu::view4(rk), a.rv = cpu::view4(rv), a.ck = cpu::view4(ck), a.cv = cpu::view4(cv);
  a.cos = cs.data_ptr<float>(), a.sin = sn.data_ptr<float>(), a.out = out.data_ptr();
  a.Lq = q.size(1), a.H = q.size(2), a.D = q.size(3), a.Dp = (a.D + 15) / 16 * 16;
  a.valid = valid, a.Lc = ck.size(1);
  a.TQ = cpu::query_tile(a.Lq), a.n_qt = (a.Lq + a.TQ - 1) / a.TQ;
  a.scale_log2e = static_cast<float>(1.4426950408889634 / std::sqrt(static_cast<double>(a.D)));
  const bool bf16 = q.scalar_type() == at::kBFloat16;
  const int best = cpu::ra_best_isa();
  int level = isa < 0 || isa > best ? best : static_cast<int>(isa);
  if (!bf16 && level == cpu::kIsaAvx512Bf16) level = cpu::kIsaAvx512;  // bf16 dot products: bf16 inputs only
  const cpu::RaKernels& kern = cpu::ra_kernels(level);
  at::parallel_for(0, q.size(0) * a.H * a.n_qt, 1, [&](int64_t t0, int64_t t1) {
    if (bf16) {
      cpu::run_tasks<c10::BFloat16>(a, kern, t0, t1);
    } else {
      cpu::run_tasks<float>(a, kern, t0, t1);
    }
  });
  return out;
}

at::Tensor rolling_attention_cpu(const at::Tensor& q, const at::Tensor& ring_k, const at::Tensor& ring_v,
                                 int64_t valid, const at::Tensor& cond_k, const at::Tensor& cond_v,
                                 const at::Tensor& cond_cos, const at::Tensor& cond_sin) {
  return rolling_attention_cpu_isa(q, ring_k, ring_v, valid, cond_k, cond_v, cond_cos, cond_sin, -1);
}

}  // namespace liveavatar_rt
