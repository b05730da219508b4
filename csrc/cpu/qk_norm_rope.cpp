// qk_norm_rope on CPU: RMSNorm of q and k over the full width C, then RoPE per head, in one
// pass per token (liveavatar_rt/ops/qk_norm_rope.py). Reads q and k once, writes q_rot,
// k_rot (any [B, L, H, D] view with a contiguous last dim, e.g. a ring-cache slot) and the
// un-rotated k_normed the conditioning cache keeps.
//
// Rounding follows the references step by step: y = dtype(x * rsqrt(mean(x^2) + eps)),
// n = dtype(y * dtype(w)), rot = dtype(fp32(n0 * cos - n1 * sin)) with the rotation in
// float64 (a product of an fp32 and a bf16/fp32 value is exact in float64, so this is the
// reference's complex128 multiply). Only the fp32 statistic's summation order differs from
// torch's (16 lanes here), so an output can differ by one rounding of the input dtype.
// Vectorised by the per-CPU clones of cpu_utils.h (the pair loop de-interleaves by itself).
#include "cpu/cpu_utils.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <tuple>
#include <vector>

namespace liveavatar_rt {
namespace cpu {
namespace {

struct Out4 {  // a [B, L, H, D] output: element strides, last dim contiguous
  void* p;
  int64_t sb, sl, sh;
};

struct QkArgs {
  const void* x[2];     // q, k: [B, L, C] rows with a contiguous last dim
  RowIndex rows[2];
  const float* w[2];    // wq, wk rounded to the input dtype, as fp32 [C]
  Out4 rot[2];          // q_rot, k_rot
  Out4 normed;          // k_normed (for k only)
  const float* cos;     // [L, D/2] contiguous fp32
  const float* sin;
  int64_t L, H, D, C;
  float eps;
};

// One token of q (which = 0) or k (which = 1); `n` is a [C] fp32 scratch row. Simple loops
// per stage so that each one vectorises (the pair loop de-interleaves by itself).
template <typename T>
inline void norm_rope_row(const QkArgs& a, int which, int64_t r, float* __restrict n) {
  const T* x = static_cast<const T*>(a.x[which]) + a.rows[which].offset(r);
  const int64_t b = r / a.L, l = r % a.L, C = a.C, D = a.D, half = a.D / 2;
  // The row widened to fp32 in `n` first: GCC keeps the lane sum scalar on bf16 loads.
  for (int64_t c = 0; c < C; ++c) n[c] = load_float(x, c);
  // fp32 sum of squares in 16 independent lanes (vectorises without reassociation).
  float lane[16] = {};
  int64_t c = 0;
  for (; c + 16 <= C; c += 16) {
    for (int k = 0; k < 16; ++k) lane[k] += n[c + k] * n[c + k];
  }
  float sum = 0.f;
  for (; c < C; ++c) sum += n[c] * n[c];
  for (float v : lane) sum += v;
  const float inv = 1.f / std::sqrt(sum / static_cast<float>(C) + a.eps);
  const T* rt = nullptr;  // rounding tag: values as stored in T
  const float* __restrict w = a.w[which];
  for (c = 0; c < C; ++c) n[c] = round_to(round_to(n[c] * inv, rt) * w[c], rt);
  const float* cs = a.cos + l * half;
  const float* sn = a.sin + l * half;
  for (int64_t h = 0; h < a.H; ++h) {
    const float* nh = n + h * D;
    if (which == 1) {
      T* kn = static_cast<T*>(a.normed.p) + b * a.normed.sb + l * a.normed.sl + h * a.normed.sh;
      for (int64_t d = 0; d < D; ++d) store_float(kn, d, nh[d]);
    }
    T* dst = static_cast<T*>(a.rot[which].p) + b * a.rot[which].sb + l * a.rot[which].sl + h * a.rot[which].sh;
    for (int64_t i = 0; i < half; ++i) {
      const double d0 = nh[2 * i], d1 = nh[2 * i + 1], c0 = cs[i], s0 = sn[i];
      store_float(dst, 2 * i, static_cast<float>(d0 * c0 - d1 * s0));
      store_float(dst, 2 * i + 1, static_cast<float>(d0 * s0 + d1 * c0));
    }
  }
}

// Rows [r0, r1) of q then k; non-template entry points so the ISA clones apply.
LIVEAVATAR_RT_ISA_CLONES
void qk_rows_f32(const QkArgs& a, int64_t r0, int64_t r1, float* n) {
  for (int64_t r = r0; r < r1; ++r) {
    norm_rope_row<float>(a, 0, r, n);
    norm_rope_row<float>(a, 1, r, n);
  }
}

LIVEAVATAR_RT_ISA_CLONES
void qk_rows_bf16(const QkArgs& a, int64_t r0, int64_t r1, float* n) {
  for (int64_t r = r0; r < r1; ++r) {
    norm_rope_row<c10::BFloat16>(a, 0, r, n);
    norm_rope_row<c10::BFloat16>(a, 1, r, n);
  }
}

Out4 out4(at::Tensor& t) { return Out4{t.data_ptr(), t.stride(0), t.stride(1), t.stride(2)}; }

void check(const at::Tensor& q, const at::Tensor& k, const at::Tensor& wq, const at::Tensor& wk,
           const at::Tensor& cos, const at::Tensor& sin, int64_t num_heads) {
  const char* op = "liveavatar_rt::qk_norm_rope";
  for (const at::Tensor* t : {&q, &k, &wq, &wk, &cos, &sin}) {
    TORCH_CHECK(t->device().is_cpu(), op, " (CPU kernel): every input must be on CPU, got ", t->device());
  }
  TORCH_CHECK(is_fp32_or_bf16(q.scalar_type()), op, ": q must be float32 or bfloat16, got ", q.scalar_type());
  TORCH_CHECK(k.scalar_type() == q.scalar_type(), op, ": k dtype ", k.scalar_type(), " != q dtype ", q.scalar_type());
  TORCH_CHECK(q.dim() == 3 && q.sizes() == k.sizes(), op, ": q and k must be [B, L, C] of one shape, got ", q.sizes(),
              " and ", k.sizes());
  const int64_t C = q.size(2);
  TORCH_CHECK(num_heads > 0 && C % num_heads == 0 && (C / num_heads) % 2 == 0, op, ": C = ", C,
              " must split into num_heads = ", num_heads, " heads of an even head dim");
  for (const at::Tensor* w : {&wq, &wk}) {
    TORCH_CHECK(at::isFloatingType(w->scalar_type()) && w->dim() == 1 && w->size(0) == C, op,
                ": wq/wk must be floating [C] = [", C, "], got ", w->scalar_type(), " ", w->sizes());
  }
  for (const at::Tensor* t : {&cos, &sin}) {
    TORCH_CHECK(t->scalar_type() == at::kFloat, op, ": cos/sin must be float32, got ", t->scalar_type());
    TORCH_CHECK(t->dim() == 2 && t->size(0) == q.size(1) && t->size(1) == C / num_heads / 2, op,
                ": cos/sin must be [L, D/2] = [", q.size(1), ", ", C / num_heads / 2, "], got ", t->sizes());
  }
}

}  // namespace
}  // namespace cpu

void qk_norm_rope_out_cpu(at::Tensor& q_rot, at::Tensor& k_rot, at::Tensor& k_normed, const at::Tensor& q_in,
                          const at::Tensor& k_in, const at::Tensor& wq, const at::Tensor& wk, double eps,
                          const at::Tensor& cos, const at::Tensor& sin) {
  const int64_t H = q_rot.dim() == 4 ? q_rot.size(2) : 0;
  cpu::check(q_in, k_in, wq, wk, cos, sin, H);
  const int64_t B = q_in.size(0), L = q_in.size(1), C = q_in.size(2), D = C / H;
  for (at::Tensor* o : {&q_rot, &k_rot, &k_normed}) {
    TORCH_CHECK(o->device().is_cpu() && o->scalar_type() == q_in.scalar_type(),
                "liveavatar_rt::qk_norm_rope_out: outputs must be CPU tensors of q's dtype ", q_in.scalar_type(),
                ", got ", o->device(), " ", o->scalar_type());
    TORCH_CHECK(o->sizes() == at::IntArrayRef({B, L, H, D}), "liveavatar_rt::qk_norm_rope_out: outputs must be ",
                "[B, L, H, D] = [", B, ", ", L, ", ", H, ", ", D, "], got ", o->sizes());
    TORCH_CHECK(o->stride(3) == 1 || D == 1, "liveavatar_rt::qk_norm_rope_out: outputs need a contiguous last dim");
  }
  if (q_in.numel() == 0) return;
  // Rows must have a contiguous last dim (any leading strides); otherwise copy.
  const at::Tensor q = q_in.stride(-1) == 1 ? q_in : q_in.contiguous();
  const at::Tensor k = k_in.stride(-1) == 1 ? k_in : k_in.contiguous();
  // The reference multiplies by weight.to(x.dtype): round the weights once, keep them as fp32.
  const at::Tensor wq32 = wq.to(q.scalar_type()).to(at::kFloat).contiguous();
  const at::Tensor wk32 = wk.to(q.scalar_type()).to(at::kFloat).contiguous();
  const at::Tensor cs = cos.contiguous(), sn = sin.contiguous();

  cpu::QkArgs a{};
  a.x[0] = q.data_ptr(), a.x[1] = k.data_ptr();
  a.rows[0] = cpu::RowIndex(q), a.rows[1] = cpu::RowIndex(k);
  a.w[0] = wq32.data_ptr<float>(), a.w[1] = wk32.data_ptr<float>();
  a.rot[0] = cpu::out4(q_rot), a.rot[1] = cpu::out4(k_rot), a.normed = cpu::out4(k_normed);
  a.cos = cs.data_ptr<float>(), a.sin = sn.data_ptr<float>();
  a.L = L, a.H = H, a.D = D, a.C = C;
  a.eps = static_cast<float>(eps);
  const bool bf16 = q.scalar_type() == at::kBFloat16;
  at::parallel_for(0, B * L, cpu::grain_rows(2 * C), [&](int64_t r0, int64_t r1) {
    std::vector<float> n(C);
    if (bf16) {
      cpu::qk_rows_bf16(a, r0, r1, n.data());
    } else {
      cpu::qk_rows_f32(a, r0, r1, n.data());
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> qk_norm_rope_cpu(const at::Tensor& q, const at::Tensor& k,
                                                                const at::Tensor& wq, const at::Tensor& wk,
                                                                double eps, const at::Tensor& cos,
                                                                const at::Tensor& sin, int64_t num_heads) {
  cpu::check(q, k, wq, wk, cos, sin, num_heads);
  const int64_t D = q.size(2) / num_heads;
  const auto opts = q.options().memory_format(at::MemoryFormat::Contiguous);
  at::Tensor q_rot = at::empty({q.size(0), q.size(1), num_heads, D}, opts);
  at::Tensor k_rot = at::empty(q_rot.sizes(), opts);
  at::Tensor k_normed = at::empty(q_rot.sizes(), opts);
  qk_norm_rope_out_cpu(q_rot, k_rot, k_normed, q, k, wq, wk, eps, cos, sin);
  return {q_rot, k_rot, k_normed};
}

}  // namespace liveavatar_rt
