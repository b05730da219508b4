// rolling_attention on CPU: one streaming block's queries over [ring[:valid] ; rope(cond_k)]
// (liveavatar_rt/ops/rolling_attention.py), flash-attention style, fp32 softmax/accumulation.
//
// Tasks are (batch, head, query tile of <= 256) under at::parallel_for. A task keeps its
// query tile transposed (QT: [D][TQ], queries in vector lanes) and streams the keys in blocks
// of kTK through the micro-kernels of rolling_attention_kernels.cpp. A key block is gathered
// into two kTK-row buffers (its ring rows copied, its conditioning keys rotated there: float64
// products rounded to fp32 then to the input dtype, exactly as rope_apply), so neither the
// [ring ; cond] concatenation nor a rotated copy of the conditioning keys is ever built.
#include "cpu/cpu_utils.h"
#include "cpu/rolling_attention_kernels.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cstdlib>
#include <limits>
#include <memory>
#include <type_traits>

namespace liveavatar_rt {
namespace cpu {
namespace {

constexpr int64_t kAhead = 4;  // rows prefetched ahead while packing
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

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
