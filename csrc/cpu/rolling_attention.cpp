// rolling_attention on CPU: one streaming block's queries over [ring[:valid] ; rope(cond_k)]
// (liveavatar_rt/ops/rolling_attention.py), flash-attention style, fp32 softmax/accumulation.
//
// Tasks are (batch, head, query tile of <= 256) under at::parallel_for. A task keeps its
// query tile transposed (QT: [D][TQ], queries in vector lanes) and streams the keys in blocks
// of kTK through the micro-kernels of rolling_attention_kernels.cpp. A key block is gathered
// into two kTK-row buffers (its ring rows copied, its conditioning keys rotated there: float64
// products rounded to fp32 then to the input dtype, exactly as rope_apply), so neither the
// [ring ; cond] concatenation nor a rotated copy of the conditioning keys is ever built.
//
// The AMX level (kIsaAmx, bf16 inputs, the default where the CPU has AMX-BF16; numerics in
// rolling_attention_amx.cpp) has its own task loop, run_tasks_amx: query tiles of up to
// kAmxMaxTQ, key blocks of kAmxTK, every operand packed into 1 KB tiles; ring key rows are
// transposed into tiles straight from the cache, conditioning keys rotated as above first.
//
// rolling_attention_fp8 (liveavatar_rt/ops/kv_fp8.py) runs the same tasks over E4M3 K/V with one
// fp32 scale per (batch, token, head): each row is dequantized as it is gathered (exact code ->
// fp32 table, times its scale in one fp32 product, rounded once to q's dtype) into a scratch
// row that then takes the bf16/fp32 path unchanged, so the result equals rolling_attention on
// the dequantized tensors bit for bit, and no dequantized copy of the cache is ever built.
#include "cpu/cpu_utils.h"
#include "cpu/rolling_attention_kernels.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <memory>
#include <type_traits>

namespace liveavatar_rt {
namespace cpu {
namespace {

constexpr int64_t kAhead = 4;  // rows prefetched ahead while packing
constexpr int64_t kAmxRowBlocks = 2;  // AMX level: blocks of 16 queries per S = Q K^T, softmax, P V pass
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

struct View4 {  // a [B, L, H, D] tensor with a contiguous last dim: element strides
  const void* p;
  int64_t sb, sl, sh;
  template <typename T>
  const T* row(int64_t b, int64_t l, int64_t h) const {
    return static_cast<const T*>(p) + b * sb + l * sl + h * sh;
  }
};

struct View3 {  // a [B, L, H] fp32 scale tensor: element strides
  const float* p;
  int64_t sb, sl, sh;
  float at(int64_t b, int64_t l, int64_t h) const { return p[b * sb + l * sl + h * sh]; }
};

struct RaArgs {
  View4 q, rk, rv, ck, cv;
  bool fp8;                  // rk, rv, ck, cv hold E4M3 codes (bytes), scaled by rks, rvs, cks, cvs
  View3 rks, rvs, cks, cvs;  // fp8 only
  const float* e4m3;         // fp8 only: the 256-entry code -> fp32 table
  const float* cos;  // [Lc, D/2] contiguous
  const float* sin;
  void* out;  // contiguous [B, Lq, H, D]
  int64_t Lq, H, D, Dp, valid, Lc, TQ, n_qt;
  float scale_log2e;
};

// A 64-byte aligned fp32 buffer, allocated once per thread chunk; zeroed unless `zero` is false
// (the AMX level writes every element before reading it).
struct Scratch {
  struct Free {
    void operator()(float* p) const { std::free(p); }
  };
  std::unique_ptr<float, Free> ptr;
  explicit Scratch(int64_t n, bool zero = true)
      : ptr(static_cast<float*>(std::aligned_alloc(64, (n * 4 + 63) / 64 * 64))) {
    TORCH_CHECK(ptr != nullptr, "liveavatar_rt::rolling_attention: out of memory for scratch");
    if (zero) std::fill(ptr.get(), ptr.get() + n, 0.f);
  }
  float* get() const { return ptr.get(); }
};

// Query tiles of one head split evenly (Lq = 96 -> one tile; 396 -> 2 x 200), 16-aligned, at
// most max_tq (kMaxTQ; kAmxMaxTQ at the AMX level).
int64_t query_tile(int64_t Lq, int64_t max_tq = kMaxTQ) {
  const int64_t n = (Lq + max_tq - 1) / max_tq;
  return ((Lq + n - 1) / n + 15) / 16 * 16;
}

// E4M3 code -> fp32, exactly, from the bit layout: sign, 4 exponent bits (bias 7), 3 mantissa
// bits; exponent 0 is subnormal (m * 2^-9); S.1111.111 is NaN (no infinities).
const float* e4m3_table() {
  static const auto table = [] {
    std::array<float, 256> t{};
    for (int c = 0; c < 256; ++c) {
      const int e = (c >> 3) & 15, m = c & 7;
      float v = e == 0 ? std::ldexp(float(m), -9) : std::ldexp(float(8 + m), e - 10);
      if ((c & 0x7F) == 0x7F) v = std::numeric_limits<float>::quiet_NaN();
      t[c] = (c & 0x80) ? -v : v;
    }
    return t;
  }();
  return table.data();
}

// One E4M3 row times its scale (one fp32 product) rounded once to the output type, as
// dequantize_kv (cloned per ISA so the table gathers and the bf16 rounding vectorise; without
// __restrict__ the byte source may alias dst and GCC keeps the loop scalar).
LIVEAVATAR_RT_ISA_CLONES
void dequant_row_f32(const uint8_t* __restrict__ src, float scale, const float* __restrict__ table,
                     float* __restrict__ dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = table[src[i]] * scale;
}
LIVEAVATAR_RT_ISA_CLONES
void dequant_row_bf16(const uint8_t* __restrict__ src, float scale, const float* __restrict__ table,
                      c10::BFloat16* __restrict__ dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) store_float(dst, i, table[src[i]] * scale);
}
inline void dequant_row(const uint8_t* s, float scale, const float* t, float* d, int64_t n) {
  dequant_row_f32(s, scale, t, d, n);
}
inline void dequant_row(const uint8_t* s, float scale, const float* t, c10::BFloat16* d, int64_t n) {
  dequant_row_bf16(s, scale, t, d, n);
}

// Row (b, l, h) of a K/V tensor as T values: the stored row itself, or for fp8 storage the row
// dequantized into `scratch` ([D] of T).
template <typename T>
const T* kv_row(const RaArgs& a, const View4& x, const View3& s, int64_t b, int64_t l, int64_t h, T* scratch) {
  if (!a.fp8) return x.row<T>(b, l, h);
  dequant_row(x.row<uint8_t>(b, l, h), s.at(b, l, h), a.e4m3, scratch, a.D);
  return scratch;
}

// Conditioning key c (its row `src`, as T's values) rotated at its sink position into dst.
template <typename T, typename Out>
void rotate_cond_key(const RaArgs& a, int64_t c, const T* src, Out* dst) {
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

template <typename T>
inline void prefetch_kv(const RaArgs& a, const View4& x, int64_t b, int64_t l, int64_t h) {
  if (a.fp8) {
    prefetch_row(x.row<uint8_t>(b, l, h), a.D);
  } else {
    prefetch_row(x.row<T>(b, l, h), a.D);
  }
}

// Key g of the attended sequence [ring[:valid] ; cond] (its K and V rows), if there is one.
template <typename T>
inline void prefetch_key(const RaArgs& a, int64_t b, int64_t g, int64_t h) {
  if (g >= a.valid + a.Lc) return;
  const bool ring = g < a.valid;
  const int64_t l = ring ? g : g - a.valid;
  prefetch_kv<T>(a, ring ? a.rk : a.ck, b, l, h);
  prefetch_kv<T>(a, ring ? a.rv : a.cv, b, l, h);
}

// bf16 -> fp32 rows (cloned per ISA so the conversion vectorises).
LIVEAVATAR_RT_ISA_CLONES
void bf16_to_float(const c10::BFloat16* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = load_float(src, i);
}

// Two bf16 value rows (keys 2i, 2i+1; `hi` null for an unpaired last key, paired with 0) as
// one row of 32-bit pairs, low half = even key (cloned per ISA so it vectorises).
LIVEAVATAR_RT_ISA_CLONES
void interleave_value_rows(const uint16_t* lo, const uint16_t* hi, uint32_t* pair_row, int64_t D) {
  if (hi == nullptr) {
    for (int64_t d = 0; d < D; ++d) pair_row[d] = lo[d];
    return;
  }
  for (int64_t d = 0; d < D; ++d) pair_row[d] = uint32_t(lo[d]) | uint32_t(hi[d]) << 16;
}

template <typename T>
void run_tasks(const RaArgs& a, const RaKernels& kern, int64_t t0, int64_t t1) {
  constexpr bool kBf16 = std::is_same_v<T, c10::BFloat16>;
  const bool pairs = kern.bf16_keys;                 // only chosen for bf16 inputs
  const bool keys_in_place = !kBf16 || pairs;        // ring rows already in the kernel's key format
  TORCH_CHECK(kBf16 || !pairs, "liveavatar_rt::rolling_attention: bf16 dot-product kernels need bf16 inputs");
  const int64_t D = a.D, Dp = a.Dp, TQp = a.TQ, N = a.valid + a.Lc;
  // bf16 inputs with the BF16 kernels: V packed as key pairs in vbuf, P as pairs in pbuf.
  const bool pv_pairs = kBf16 && kern.pv_pairs != nullptr;
  Scratch qt(Dp * TQp), st(kTK * TQp), o(TQp * Dp), m(TQp), l(TQp), kbuf(kTK * Dp), vbuf(kTK * Dp),
      pbuf(pv_pairs ? kTK / 2 * TQp : 1);
  // fp8: the key row being gathered and two value rows (a key pair's), dequantized to T.
  Scratch kdq(a.fp8 ? Dp : 1), vdq(a.fp8 ? 2 * Dp : 1);
  auto* vpairs = reinterpret_cast<uint32_t*>(vbuf.get());
  const uint16_t* vsrc[kTK];  // value rows of the key block (bf16 bits), paired two by two
  auto* ppairs = reinterpret_cast<uint32_t*>(pbuf.get());
  const void* krows[kTK + kKR];
  for (int64_t task = t0; task < t1; ++task) {
    const int64_t qi = task % a.n_qt, h = (task / a.n_qt) % a.H, b = task / a.n_qt / a.H;
    const int64_t i0 = qi * a.TQ, rows = std::min(a.TQ, a.Lq - i0), rows_p = (rows + kMR - 1) / kMR * kMR;
    // QT: [D][TQp] fp32, or [D/2][TQp] bf16 pairs (low half = even dim); padded queries are 0.
    auto* qt2 = reinterpret_cast<uint32_t*>(qt.get());
    for (int64_t r = 0; r < TQp; ++r) {
      const T* q = r < rows ? a.q.row<T>(b, i0 + r, h) : nullptr;
      if (r + kAhead < rows) prefetch_row(a.q.row<T>(b, i0 + r + kAhead, h), D);
      if (pairs) {  // bf16 inputs: a pair is the row's own 32 bits (low half = even dim)
        for (int64_t d = 0; d < D; d += 2) {
          uint32_t pair = 0;
          if (q) std::memcpy(&pair, q + d, sizeof(pair));
          qt2[d / 2 * TQp + r] = pair;
        }
        continue;
      }
      for (int64_t d = 0; d < D; ++d) qt.get()[d * TQp + r] = q ? load_float(q, d) : 0.f;
    }
    std::fill(m.get(), m.get() + TQp, kNegInf);
    std::fill(l.get(), l.get() + TQp, 0.f);
    std::fill(o.get(), o.get() + TQp * Dp, 0.f);
    for (int64_t kb = 0; kb < N; kb += kTK) {
      const int64_t nk = std::min(kTK, N - kb);
      for (int64_t j = 0; j < nk; ++j) {
        const int64_t g = kb + j, ga = g + kAhead;
        prefetch_key<T>(a, b, ga, h);
        const bool ring = g < a.valid;
        const int64_t l = ring ? g : g - a.valid;  // row in the ring or in the conditioning cache
        const T* k = kv_row<T>(a, ring ? a.rk : a.ck, ring ? a.rks : a.cks, b, l, h, reinterpret_cast<T*>(kdq.get()));
        float* kf = kbuf.get() + j * Dp;
        auto* kh = reinterpret_cast<c10::BFloat16*>(kf);
        if (ring && keys_in_place) {  // copied: rows H * D apart cost TLB misses in the kernels
          std::memcpy(kf, k, D * sizeof(T));
        } else if (ring) {  // bf16 ring keys for an fp32 kernel
          bf16_to_float(reinterpret_cast<const c10::BFloat16*>(k), kf, D);
        } else if (pairs) {
          rotate_cond_key<T>(a, l, k, kh);
        } else {
          rotate_cond_key<T>(a, l, k, kf);
        }
        krows[j] = kf;
        // fp8: value rows alternate between two scratch rows, so a pair's even row is still there.
        T* vscratch = reinterpret_cast<T*>(vdq.get() + (j % 2) * Dp);
        const T* v = kv_row<T>(a, ring ? a.rv : a.cv, ring ? a.rvs : a.cvs, b, l, h, vscratch);
        float* vf = vbuf.get() + j * Dp;
        if (pv_pairs) {
          vsrc[j] = reinterpret_cast<const uint16_t*>(v);
          if (j % 2 == 1) interleave_value_rows(vsrc[j - 1], vsrc[j], vpairs + (j / 2) * Dp, D);
          if (j % 2 == 0 && j + 1 == nk) interleave_value_rows(vsrc[j], nullptr, vpairs + (j / 2) * Dp, D);
        } else if constexpr (kBf16) {
          bf16_to_float(v, vf, D);
        } else {
          std::memcpy(vf, v, D * sizeof(float));
        }
      }
      for (int64_t j = nk; j < kTK + kKR; ++j) krows[j] = krows[nk - 1];  // whole kKR groups; unused
      kern.qk(qt.get(), krows, st.get(), nk, TQp, D);
      kern.softmax(st.get(), m.get(), l.get(), o.get(), rows, nk, TQp, Dp, a.scale_log2e);
      if (pv_pairs) {
        pack_p_pairs(st.get(), ppairs, nk, TQp);
        kern.pv_pairs(ppairs, vpairs, o.get(), rows_p, (nk + 1) / 2, TQp, D, Dp);
      } else {
        kern.pv(st.get(), vbuf.get(), o.get(), rows_p, nk, TQp, D, Dp);
      }
    }
    for (int64_t r = 0; r < rows; ++r) {
      T* dst = static_cast<T*>(a.out) + ((b * a.Lq + i0 + r) * a.H + h) * D;
      const float inv = 1.f / l.get()[r];
      for (int64_t d = 0; d < D; ++d) store_float(dst, d, o.get()[r * Dp + d] * inv);
    }
  }
}

// kIsaAmx (bf16 inputs; kernels and numerics in rolling_attention_amx.cpp): a task packs its
// queries once into tiles, then per block of kAmxTK keys packs the keys (ring rows read in
// place, conditioning keys rotated into kbuf, fp8 rows dequantized there first) and the values
// (pairs of keys) into tiles, and runs S = Q K^T, the online softmax and O += P V. The tile
// configuration is loaded at the start of a thread's chunk and released at its end (as torch's
// own AMX kernels do around cpublas::brgemm), so no other code on the thread sees ours.
void run_tasks_amx(const RaArgs& a, int64_t t0, int64_t t1) {
  using T = c10::BFloat16;
  const int64_t D = a.D, Dk = (D + 31) / 32 * 32, TQp = (a.TQ + 15) / 16 * 16, N = a.valid + a.Lc;
  // fp32-sized scratch: bf16 / u32 buffers take half / one float per element
  constexpr bool kNoZero = false;
  Scratch qb(TQp * Dk / 2, kNoZero), kb(Dk / 2 * kAmxTK, kNoZero), vb(kAmxTK / 2 * Dk, kNoZero),
      sb(16 * kAmxRowBlocks * kAmxTK, kNoZero), pb(16 * kAmxRowBlocks * kAmxTK / 2, kNoZero), ob(TQp * Dk, kNoZero),
      m(TQp, kNoZero), l(TQp, kNoZero), kbuf(kAmxTK * Dk / 2, kNoZero), kdq(a.fp8 ? Dk / 2 : 1, kNoZero),
      vdq(a.fp8 ? Dk : 1, kNoZero);
  auto* Qb = reinterpret_cast<uint16_t*>(qb.get());
  auto* Kb = reinterpret_cast<uint32_t*>(kb.get());
  auto* Vb = reinterpret_cast<uint32_t*>(vb.get());
  auto* Pb = reinterpret_cast<uint16_t*>(pb.get());
  auto* Kr = reinterpret_cast<uint16_t*>(kbuf.get());  // rotated / dequantized keys, [kAmxTK][Dk]
  const uint16_t* krows[kAmxTK];
  const uint16_t* vsrc[kAmxTK];
  amx_tiles_begin();
  for (int64_t task = t0; task < t1; ++task) {
    const int64_t qi = task % a.n_qt, h = (task / a.n_qt) % a.H, b = task / a.n_qt / a.H;
    const int64_t i0 = qi * a.TQ, rows = std::min(a.TQ, a.Lq - i0), nrb = (rows + 15) / 16;
    for (int64_t r = 0; r < nrb * 16; ++r) {
      if (r + kAhead < rows) prefetch_row(a.q.row<T>(b, i0 + r + kAhead, h), D);
      const T* q = r < rows ? a.q.row<T>(b, i0 + r, h) : nullptr;
      amx_pack_q_row(reinterpret_cast<const uint16_t*>(q), r, D, Dk, Qb);
    }
    std::fill(m.get(), m.get() + TQp, kNegInf);
    std::fill(l.get(), l.get() + TQp, 0.f);
    std::fill(ob.get(), ob.get() + nrb * 16 * Dk, 0.f);
    for (int64_t k0 = 0; k0 < N; k0 += kAmxTK) {
      const int64_t nk = std::min(kAmxTK, N - k0), nkp = (nk + 31) / 32 * 32;
      for (int64_t j0 = 0; j0 < nkp; j0 += 16) {  // groups of 16 keys: gathered, then packed
        const int64_t n = std::clamp<int64_t>(nk - j0, 0, 16);
        for (int64_t j = j0; j < j0 + n; ++j) {
          const int64_t g = k0 + j, ga = g + kAhead;
          prefetch_key<T>(a, b, ga, h);
          const bool ring = g < a.valid;
          const int64_t l = ring ? g : g - a.valid;  // row in the ring or in the conditioning cache
          uint16_t* kr = Kr + j * Dk;
          if (ring) {  // in place (bf16), or dequantized into its kbuf row (fp8)
            krows[j] = reinterpret_cast<const uint16_t*>(kv_row<T>(a, a.rk, a.rks, b, l, h, reinterpret_cast<T*>(kr)));
          } else {
            const T* k = kv_row<T>(a, a.ck, a.cks, b, l, h, reinterpret_cast<T*>(kdq.get()));
            amx_rope_row(reinterpret_cast<const uint16_t*>(k), a.cos + l * (D / 2), a.sin + l * (D / 2), D, kr);
            krows[j] = kr;
          }
          // fp8: value rows alternate between two scratch rows, so a pair's even row is still there.
          T* vscratch = reinterpret_cast<T*>(reinterpret_cast<uint16_t*>(vdq.get()) + (j % 2) * Dk);
          vsrc[j] = reinterpret_cast<const uint16_t*>(
              kv_row<T>(a, ring ? a.rv : a.cv, ring ? a.rvs : a.cvs, b, l, h, vscratch));
          if (j % 2 == 1) amx_pack_v_pair(vsrc[j - 1], vsrc[j], j / 2, D, Dk, Vb);
          if (j % 2 == 0 && j + 1 == nk) amx_pack_v_pair(vsrc[j], nullptr, j / 2, D, Dk, Vb);
        }
        amx_pack_k16(krows + j0, n, j0 / 16, nkp / 16, D, Dk, Kb);
      }
      for (int64_t p = (nk + 1) / 2; p < nkp / 2; ++p) amx_pack_v_pair(nullptr, nullptr, p, D, Dk, Vb);
      // 32 queries at a time: their scores and P stay in L1 between the three steps
      for (int64_t rb = 0; rb < nrb; rb += kAmxRowBlocks) {
        const int64_t nr = std::min(kAmxRowBlocks, nrb - rb);
        amx_qk(Qb + rb * Dk * 16, Kb, sb.get(), nr, nkp, Dk);
        amx_softmax(sb.get(), Pb, m.get() + rb * 16, l.get() + rb * 16, ob.get() + rb * 16 * Dk, nr, nk, nkp, Dk,
                    a.scale_log2e);
        amx_pv(Pb, Vb, ob.get() + rb * 16 * Dk, nr, nkp, Dk);
      }
    }
    for (int64_t r = 0; r < rows; ++r) {
      T* dst = static_cast<T*>(a.out) + ((b * a.Lq + i0 + r) * a.H + h) * D;
      amx_store_row(ob.get(), r, D, Dk, 1.f / l.get()[r], reinterpret_cast<uint16_t*>(dst));
    }
  }
  amx_tiles_end();
}

View4 view4(const at::Tensor& t) { return View4{t.data_ptr(), t.stride(0), t.stride(1), t.stride(2)}; }
View3 view3(const at::Tensor& t) { return View3{t.data_ptr<float>(), t.stride(0), t.stride(1), t.stride(2)}; }

// Rows need a contiguous last dim (other strides are addressed directly); else a copy.
at::Tensor rows_contiguous(const at::Tensor& t) { return t.stride(-1) == 1 ? t : t.contiguous(); }

// fp8: K/V must be E4M3 codes; else they must have q's dtype.
void check(const char* op, const at::Tensor& q, const at::Tensor& rk, const at::Tensor& rv, int64_t valid,
           const at::Tensor& ck, const at::Tensor& cv, const at::Tensor& cos, const at::Tensor& sin, bool fp8) {
  for (const at::Tensor* t : {&q, &rk, &rv, &ck, &cv, &cos, &sin})
    TORCH_CHECK(t->device().is_cpu(), op, " (CPU kernel): every input must be on CPU, got ", t->device());
  TORCH_CHECK(is_fp32_or_bf16(q.scalar_type()), op, ": q must be float32 or bfloat16, got ", q.scalar_type());
  TORCH_CHECK(q.dim() == 4, op, ": q must be [B, Lq, H, D], got ", q.sizes());
  for (const at::Tensor* t : {&rk, &rv, &ck, &cv}) {
    if (fp8) {
      TORCH_CHECK(t->scalar_type() == at::kFloat8_e4m3fn, op, ": ring_k/ring_v/cond_k/cond_v must be ",
                  "Float8_e4m3fn (E4M3 codes), got ", t->scalar_type());
    } else {
      TORCH_CHECK(t->scalar_type() == q.scalar_type(), op, ": k/v dtype ", t->scalar_type(), " != q dtype ",
                  q.scalar_type());
    }
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

// An fp8 scale tensor: fp32 [B, L, H] of its K/V [B, L, H, D] (any strides).
void check_scale(const char* op, const char* name, const at::Tensor& s, const at::Tensor& x) {
  TORCH_CHECK(s.device().is_cpu(), op, " (CPU kernel): every input must be on CPU, got ", s.device(), " for ", name);
  TORCH_CHECK(s.scalar_type() == at::kFloat, op, ": ", name, " must be float32, got ", s.scalar_type());
  TORCH_CHECK(s.dim() == 3 && s.sizes() == x.sizes().slice(0, 3), op, ": ", name, " must be [B, L, H] = ",
              x.sizes().slice(0, 3), " (its K/V's), got ", s.sizes());
}

struct Fp8Scales {  // [B, L, H] fp32 each, checked
  const at::Tensor &rks, &rvs, &cks, &cvs;
};

// Both ops after their checks; `scales` null: K/V in q's dtype, else E4M3 codes.
at::Tensor run(const at::Tensor& q_in, const at::Tensor& ring_k, const at::Tensor& ring_v, int64_t valid,
               const at::Tensor& cond_k, const at::Tensor& cond_v, const at::Tensor& cond_cos,
               const at::Tensor& cond_sin, int64_t isa, const Fp8Scales* scales) {
  const at::Tensor q = rows_contiguous(q_in), rk = rows_contiguous(ring_k), rv = rows_contiguous(ring_v);
  const at::Tensor ck = rows_contiguous(cond_k), cv = rows_contiguous(cond_v);
  const at::Tensor cs = cond_cos.contiguous(), sn = cond_sin.contiguous();
  at::Tensor out = at::empty(q.sizes(), q.options().memory_format(at::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out;

  RaArgs a{};
  a.q = view4(q), a.rk = view4(rk), a.rv = view4(rv), a.ck = view4(ck), a.cv = view4(cv);
  a.fp8 = scales != nullptr;
  if (a.fp8) {
    a.rks = view3(scales->rks), a.rvs = view3(scales->rvs), a.cks = view3(scales->cks), a.cvs = view3(scales->cvs);
    a.e4m3 = e4m3_table();
  }
  a.cos = cs.data_ptr<float>(), a.sin = sn.data_ptr<float>(), a.out = out.data_ptr();
  a.Lq = q.size(1), a.H = q.size(2), a.D = q.size(3), a.Dp = (a.D + 15) / 16 * 16;
  a.valid = valid, a.Lc = ck.size(1);
  a.scale_log2e = static_cast<float>(1.4426950408889634 / std::sqrt(static_cast<double>(a.D)));
  const bool bf16 = q.scalar_type() == at::kBFloat16;
  const int best = ra_best_isa();
  int level = isa < 0 || isa > best ? best : static_cast<int>(isa);
  if (!bf16 && level >= kIsaAvx512Bf16) level = kIsaAvx512;  // bf16 dot products / tiles: bf16 inputs only
  a.TQ = query_tile(a.Lq, level == kIsaAmx ? kAmxMaxTQ : kMaxTQ), a.n_qt = (a.Lq + a.TQ - 1) / a.TQ;
  const RaKernels& kern = ra_kernels(std::min(level, int(kIsaAvx512Bf16)));
  at::parallel_for(0, q.size(0) * a.H * a.n_qt, 1, [&](int64_t t0, int64_t t1) {
    if (level == kIsaAmx) {
      run_tasks_amx(a, t0, t1);
    } else if (bf16) {
      run_tasks<c10::BFloat16>(a, kern, t0, t1);
    } else {
      run_tasks<float>(a, kern, t0, t1);
    }
  });
  return out;
}

}  // namespace
}  // namespace cpu

int64_t rolling_attention_best_isa() { return cpu::ra_best_isa(); }

at::Tensor rolling_attention_cpu_isa(const at::Tensor& q, const at::Tensor& ring_k, const at::Tensor& ring_v,
                                     int64_t valid, const at::Tensor& cond_k, const at::Tensor& cond_v,
                                     const at::Tensor& cond_cos, const at::Tensor& cond_sin, int64_t isa) {
  cpu::check("liveavatar_rt::rolling_attention", q, ring_k, ring_v, valid, cond_k, cond_v, cond_cos, cond_sin, false);
  return cpu::run(q, ring_k, ring_v, valid, cond_k, cond_v, cond_cos, cond_sin, isa, nullptr);
}

at::Tensor rolling_attention_cpu(const at::Tensor& q, const at::Tensor& ring_k, const at::Tensor& ring_v,
                                 int64_t valid, const at::Tensor& cond_k, const at::Tensor& cond_v,
                                 const at::Tensor& cond_cos, const at::Tensor& cond_sin) {
  return rolling_attention_cpu_isa(q, ring_k, ring_v, valid, cond_k, cond_v, cond_cos, cond_sin, -1);
}

at::Tensor rolling_attention_fp8_cpu_isa(const at::Tensor& q, const at::Tensor& ring_k, const at::Tensor& ring_v,
                                         const at::Tensor& ring_ks, const at::Tensor& ring_vs, int64_t valid,
                                         const at::Tensor& cond_k, const at::Tensor& cond_v,
                                         const at::Tensor& cond_ks, const at::Tensor& cond_vs,
                                         const at::Tensor& cond_cos, const at::Tensor& cond_sin, int64_t isa) {
  const char* op = "liveavatar_rt::rolling_attention_fp8";
  cpu::check(op, q, ring_k, ring_v, valid, cond_k, cond_v, cond_cos, cond_sin, true);
  cpu::check_scale(op, "ring_ks", ring_ks, ring_k);
  cpu::check_scale(op, "ring_vs", ring_vs, ring_v);
  cpu::check_scale(op, "cond_ks", cond_ks, cond_k);
  cpu::check_scale(op, "cond_vs", cond_vs, cond_v);
  const cpu::Fp8Scales scales{ring_ks, ring_vs, cond_ks, cond_vs};
  return cpu::run(q, ring_k, ring_v, valid, cond_k, cond_v, cond_cos, cond_sin, isa, &scales);
}

at::Tensor rolling_attention_fp8_cpu(const at::Tensor& q, const at::Tensor& ring_k, const at::Tensor& ring_v,
                                     const at::Tensor& ring_ks, const at::Tensor& ring_vs, int64_t valid,
                                     const at::Tensor& cond_k, const at::Tensor& cond_v, const at::Tensor& cond_ks,
                                     const at::Tensor& cond_vs, const at::Tensor& cond_cos,
                                     const at::Tensor& cond_sin) {
  return rolling_attention_fp8_cpu_isa(q, ring_k, ring_v, ring_ks, ring_vs, valid, cond_k, cond_v, cond_ks, cond_vs,
                                       cond_cos, cond_sin, -1);
}

}  // namespace liveavatar_rt
