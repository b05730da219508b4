// Each CPU kernel (csrc/cpu/) against a straightforward at:: computation of the same formula,
// bit for bit, plus its input checks. Built and run by CMake/CTest (`make ctest`).
#include <ATen/ATen.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <tuple>
#include <functional>
#include <string>
#include <vector>

#include "cpu/rolling_attention_kernels.h"
#include "ops.h"
#include "tests/test_util.h"


namespace {

using namespace liveavatar_rt::test;

// rope_apply in float64 on [B, L, H, D] with cos/sin [L, D/2], rounded to fp32 then x's dtype.
at::Tensor rope_ref(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  const int64_t B = x.size(0), L = x.size(1), H = x.size(2), D = x.size(3);
  const auto xd = x.to(at::kDouble).reshape({B, L, H, D / 2, 2});
  const auto a = xd.select(-1, 0), b = xd.select(-1, 1);
  const auto c = cos.to(at::kDouble).reshape({1, L, 1, D / 2}), s = sin.to(at::kDouble).reshape({1, L, 1, D / 2});
  return at::stack({a * c - b * s, a * s + b * c}, -1).reshape({B, L, H, D}).to(at::kFloat).to(x.scalar_type());
}

// liveavatar_rt/ops/rolling_attention.py in float64 (before the output's rounding).
at::Tensor rolling_attention_ref(const at::Tensor& q, const at::Tensor& rk, const at::Tensor& rv, int64_t valid,
                                 const at::Tensor& ck, const at::Tensor& cv, const at::Tensor& cs,
                                 const at::Tensor& sn) {
  const auto keys = at::cat({rk.slice(1, 0, valid), rope_ref(ck, cs, sn)}, 1).to(at::kDouble);
  const auto vals = at::cat({rv.slice(1, 0, valid), cv}, 1).to(at::kDouble);
  const auto s = at::einsum("bqhd,bkhd->bhqk", {q.to(at::kDouble), keys}) / std::sqrt(double(q.size(3)));
  return at::einsum("bhqk,bkhd->bqhd", {at::softmax(s, -1), vals});
}

// liveavatar_rt/ops/norm.py::rms_norm
at::Tensor rms_norm_ref(const at::Tensor& x, const at::Tensor& w, double eps) {
  const auto xf = x.to(at::kFloat);
  const auto y = (xf * at::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + eps)).to(x.scalar_type());
  return y * w.to(x.scalar_type());
}

// liveavatar_rt/ops/modulate.py::modulate with per-frame shift/scale [B, F, C]
at::Tensor modulate_ref(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& scale, at::ScalarType out) {
  const int64_t B = x.size(0), L = x.size(1), C = x.size(2), F = shift.size(1);
  const auto x4 = x.reshape({B, F, L / F, C}).to(at::kFloat);
  return (x4 * (1 + scale.unsqueeze(2)) + shift.unsqueeze(2)).to(out).reshape({B, L, C});
}

void test_rms_norm() {
  const double eps = 1e-6;
  const std::vector<std::vector<int64_t>> shapes = {{2, 16, 128}, {1, 3, 5120}, {1, 1, 67}, {5}, {1, 40000}};
  for (auto dtype : {at::kFloat, at::kBFloat16}) {
    for (const auto& shape : shapes) {
      const auto x = (at::randn(shape) * 3).to(dtype);
      const auto w = at::randn({shape.back()});
      expect_equal(liveavatar_rt::rms_norm_cpu(x, w, eps), rms_norm_ref(x, w, eps),
                   "rms_norm " + name(dtype) + " " + c10::str(x.sizes()));
    }
    const auto wide = (at::randn({2, 6, 256}) * 3).to(dtype);
    const auto w = at::randn({128});
    for (const auto& [what, x] : std::vector<std::pair<std::string, at::Tensor>>{
             {"slice", wide.slice(2, 0, 128)},
             {"uneven rows", wide.slice(1, 1, 4).slice(2, 128, 256)},
             {"transposed", (at::randn({2, 128, 6}) * 3).to(dtype).transpose(1, 2)},
         }) {
      expect_equal(liveavatar_rt::rms_norm_cpu(x, w, eps), rms_norm_ref(x, w, eps),
                   "rms_norm " + name(dtype) + " " + what);
    }
    const auto x = (at::randn({3, 128}) * 3).to(dtype);
    auto out = at::empty_like(x);
    liveavatar_rt::rms_norm_out_cpu(out, x, w, eps);
    expect_equal(out, rms_norm_ref(x, w, eps), "rms_norm_out " + name(dtype));
  }
  const auto x = at::randn({2, 8});
  expect_throws([&] { liveavatar_rt::rms_norm_cpu(x.to(at::kHalf), at::randn({8}), 1e-6); }, "float32 or bfloat16",
                "rms_norm rejects fp16");
  expect_throws([&] { liveavatar_rt::rms_norm_cpu(x, at::randn({4}), 1e-6); }, "weight must have shape",
                "rms_norm rejects a wrong weight");
  expect_throws([&] { liveavatar_rt::rms_norm_cpu(at::empty({2, 8}, at::device(at::kMeta)), at::randn({8}), 1e-6); },
                "must be on CPU", "rms_norm rejects a non-CPU x");
}

void test_modulate() {
  struct Case {
    int64_t B, F, S, C;
  };
  for (auto xt : {at::kFloat, at::kBFloat16}) {
    for (auto ot : {at::kFloat, at::kBFloat16}) {
      for (const Case& c : {Case{2, 3, 16, 128}, Case{1, 2, 3, 5120}, Case{1, 1, 1, 67}, Case{2, 5, 1, 67}}) {
        const auto x = (at::randn({c.B, c.F * c.S, c.C}) * 3).to(xt);
        const auto shift = at::randn({c.B, c.F, c.C});
        const auto scale = at::randn({c.B, c.F, c.C}) * 0.5;
        expect_equal(liveavatar_rt::modulate_cpu(x, shift, scale, ot), modulate_ref(x, shift, scale, ot),
                     "modulate " + name(xt) + "->" + name(ot) + " " + c10::str(x.sizes()) + " F=" +
                         std::to_string(c.F));
      }
    }
    // strided x rows, shift/scale as strided views of one [B, F, 6, C] tensor, batch broadcast
    const auto x = (at::randn({2, 12, 256}) * 3).to(xt).slice(2, 128, 256);
    const auto m = at::randn({2, 3, 6, 128});
    const auto shift = m.select(2, 0), scale = m.select(2, 1);
    expect_equal(liveavatar_rt::modulate_cpu(x, shift, scale, at::kBFloat16),
                 modulate_ref(x, shift, scale, at::kBFloat16), "modulate strided " + name(xt));
    const auto s1 = shift.slice(0, 0, 1), c1 = scale.slice(0, 0, 1);
    expect_equal(liveavatar_rt::modulate_cpu(x, s1, c1, xt), modulate_ref(x, s1.expand({2, 3, 128}),
                 c1.expand({2, 3, 128}), xt), "modulate batch broadcast " + name(xt));
    auto out = at::empty({2, 12, 128}, at::kFloat);
    liveavatar_rt::modulate_out_cpu(out, x, shift, scale);
    expect_equal(out, modulate_ref(x, shift, scale, at::kFloat), "modulate_out " + name(xt));
  }
  const auto x = at::randn({1, 6, 8});
  expect_throws([&] { liveavatar_rt::modulate_cpu(x, at::randn({1, 4, 8}), at::randn({1, 4, 8}), at::kFloat); },
                "must divide", "modulate rejects F not dividing L");
  expect_throws([&] { liveavatar_rt::modulate_cpu(x, at::randn({1, 3, 8}).to(at::kBFloat16), at::randn({1, 3, 8}),
                                                  at::kFloat); },
                "must be float32", "modulate rejects bf16 shift");
  expect_throws([&] { liveavatar_rt::modulate_cpu(x, at::randn({1, 3, 8}), at::randn({1, 3, 8}), at::kHalf); },
                "out_dtype must be float32 or bfloat16", "modulate rejects fp16 out");
}

void test_rolling_attention() {
  struct Case {
    int64_t B, Lq, H, D, cap, valid, Lc;
    const char* what;
  };
  const std::vector<Case> cases = {
      {1, 96, 2, 64, 384, 384, 80, "tiny"},       {1, 40, 4, 128, 160, 120, 100, "14B head dim"},
      {2, 5, 3, 48, 20, 7, 9, "odd, valid < cap"}, {1, 1, 2, 64, 16, 16, 0, "Lq 1, no cond"},
      {1, 3, 1, 40, 8, 0, 5, "cond only, D 40"},
  };
  const int64_t best = liveavatar_rt::rolling_attention_best_isa();
  report(best >= 0 && best <= 3, "rolling_attention_best_isa() = " + std::to_string(best));
  for (auto dtype : {at::kFloat, at::kBFloat16}) {
    for (const Case& c : cases) {
      const auto q = at::randn({c.B, c.Lq, c.H, c.D}).to(dtype);
      const auto rk = at::randn({c.B, c.cap, c.H, c.D}).to(dtype), rv = at::randn({c.B, c.cap, c.H, c.D}).to(dtype);
      const auto ck = (at::randn({c.B, c.Lc, c.H, c.D}) * 2).to(dtype), cv = at::randn({c.B, c.Lc, c.H, c.D}).to(dtype);
      const auto ang = at::rand({c.Lc, c.D / 2}) * 6;
      const auto cs = ang.cos(), sn = ang.sin();
      const auto want = rolling_attention_ref(q, rk, rv, c.valid, ck, cv, cs, sn);
      const double rel = dtype == at::kBFloat16 ? 1.0 / 256 : 0.0, atol = dtype == at::kBFloat16 ? 1e-3 : 1e-5;
      for (int64_t isa = 0; isa <= best; ++isa) {
        const auto got = liveavatar_rt::rolling_attention_cpu_isa(q, rk, rv, c.valid, ck, cv, cs, sn, isa);
        expect_close(got, want, rel, atol,
                     "rolling_attention " + name(dtype) + " isa " + std::to_string(isa) + " " + c.what);
      }
    }
    // strided: q/k/v as slices of wider buffers (heads of a fused qkv, batch-strided ring)
    const auto qkv = at::randn({2, 7, 3, 2, 32}).to(dtype);
    const auto ring = at::randn({2, 2, 12, 2, 32}).to(dtype);
    const auto cond = at::randn({2, 6, 2, 2, 64}).to(dtype).slice(-1, 0, 32);
    const auto ang = at::rand({6, 16});
    const auto q = qkv.select(2, 0), rk = ring.select(1, 0), rv = ring.select(1, 1);
    const auto ck = cond.select(2, 0), cv = cond.select(2, 1);
    const auto want = rolling_attention_ref(q, rk, rv, 9, ck, cv, ang.cos(), ang.sin());
    for (int64_t isa = 0; isa <= best; ++isa) {
      expect_close(liveavatar_rt::rolling_attention_cpu_isa(q, rk, rv, 9, ck, cv, ang.cos(), ang.sin(), isa), want,
                   dtype == at::kBFloat16 ? 1.0 / 256 : 0.0, dtype == at::kBFloat16 ? 1e-3 : 1e-5,
                   "rolling_attention strided " + name(dtype) + " isa " + std::to_string(isa));
    }
  }
  // AMX level (after the cases above, so their random inputs stay as they were): 3 query blocks
  // of 16 (one pass of 2, one of 1), 3 key blocks of kAmxTK, the last partial; every level.
  for (auto dtype : {at::kFloat, at::kBFloat16}) {
    const Case c{1, 40, 2, 64, 600, 530, 61, "several key blocks"};
    const auto q = at::randn({c.B, c.Lq, c.H, c.D}).to(dtype);
    const auto rk = at::randn({c.B, c.cap, c.H, c.D}).to(dtype), rv = at::randn({c.B, c.cap, c.H, c.D}).to(dtype);
    const auto ck = (at::randn({c.B, c.Lc, c.H, c.D}) * 2).to(dtype), cv = at::randn({c.B, c.Lc, c.H, c.D}).to(dtype);
    const auto ang = at::rand({c.Lc, c.D / 2}) * 6;
    const auto want = rolling_attention_ref(q, rk, rv, c.valid, ck, cv, ang.cos(), ang.sin());
    for (int64_t isa = 0; isa <= best; ++isa) {
      expect_close(liveavatar_rt::rolling_attention_cpu_isa(q, rk, rv, c.valid, ck, cv, ang.cos(), ang.sin(), isa),
                   want, dtype == at::kBFloat16 ? 1.0 / 256 : 0.0, dtype == at::kBFloat16 ? 1e-3 : 1e-5,
                   "rolling_attention " + name(dtype) + " isa " + std::to_string(isa) + " " + c.what);
    }
  }
  const auto x = at::randn({1, 4, 2, 16}), cs = at::rand({3, 8});
  auto call = [&](const at::Tensor& q, int64_t valid, const at::Tensor& c) {
    return liveavatar_rt::rolling_attention_cpu_isa(q, x, x, valid, x.slice(1, 0, 3), x.slice(1, 0, 3), c, c, -1);
  };
  expect_throws([&] { call(x.to(at::kHalf), 4, cs); }, "float32 or bfloat16", "rolling_attention rejects fp16");
  expect_throws([&] { call(x, 5, cs); }, "valid must be in", "rolling_attention rejects valid > cap");
  expect_throws([&] { call(x, 4, cs.to(at::kDouble)); }, "cond_cos/cond_sin must be float32",
                "rolling_attention rejects fp64 cos");
  expect_throws([&] { call(x.to(at::kBFloat16), 4, cs); }, "!= q dtype", "rolling_attention rejects mixed dtypes");
}

// The AMX level's conditioning-key rotation (vectorised) equals rope_apply bit for bit: float64
// products and sums, rounded to fp32 then bf16, for head dims with and without a vector tail.
void test_amx_rope_row() {
  if (!liveavatar_rt::cpu::ra_amx_supported()) {
    report(true, "amx_rope_row: skipped, this CPU/OS has no AMX");
    return;
  }
  for (int64_t D : {128, 64, 48, 40, 2}) {
    const int64_t L = 37;
    auto x = (at::randn({1, L, 1, D}) * 3).to(at::kBFloat16);
    x.index_put_({0, 0, 0, 0}, 1e-39);  // a denormal: rounded as the reference, not flushed
    const auto ang = at::rand({L, D / 2}, at::kDouble) * 40;
    const auto cs = ang.cos().to(at::kFloat), sn = ang.sin().to(at::kFloat);
    auto got = at::empty_like(x);
    for (int64_t l = 0; l < L; ++l) {
      liveavatar_rt::cpu::amx_rope_row(reinterpret_cast<const uint16_t*>(x.data_ptr()) + l * D,
                                       cs.data_ptr<float>() + l * (D / 2), sn.data_ptr<float>() + l * (D / 2), D,
                                       reinterpret_cast<uint16_t*>(got.data_ptr()) + l * D);
    }
    expect_equal(got, rope_ref(x, cs, sn), "amx_rope_row D " + std::to_string(D));
  }
}

void test_qk_norm_rope() {
  const double eps = 1e-6;
  for (auto dtype : {at::kFloat, at::kBFloat16}) {
    const std::vector<std::array<int64_t, 4>> shapes = {{1, 96, 2, 64}, {1, 6, 40, 128}, {2, 3, 3, 48}};
    for (const auto& [B, L, H, D] : shapes) {
      const int64_t C = H * D;
      const auto q = (at::randn({B, L, C}) * 3).to(dtype), k = (at::randn({B, L, C}) * 3).to(dtype);
      const auto wq = at::randn({C}), wk = at::randn({C});
      const auto ang = at::rand({L, D / 2}) * 6;
      const auto cs = ang.cos(), sn = ang.sin();
      const auto qn = rms_norm_ref(q, wq, eps).reshape({B, L, H, D});
      const auto kn = rms_norm_ref(k, wk, eps).reshape({B, L, H, D});
      const auto [q_rot, k_rot, k_normed] = liveavatar_rt::qk_norm_rope_cpu(q, k, wq, wk, eps, cs, sn, H);
      // The statistic's summation order differs from torch's: a normed value may round the
      // other way in bf16 (one ulp), which the rotation carries along.
      const double rel = dtype == at::kBFloat16 ? 1.0 / 64 : 1e-6;
      const std::string what = " " + name(dtype) + " " + c10::str(q.sizes()) + " H=" + std::to_string(H);
      expect_close(k_normed, kn, rel, 1e-6, "qk_norm_rope k_normed" + what);
      expect_close(q_rot, rope_ref(qn, cs, sn), rel, 1e-6, "qk_norm_rope q_rot" + what);
      expect_close(k_rot, rope_ref(kn, cs, sn), rel, 1e-6, "qk_norm_rope k_rot" + what);
    }
    // out-variant: k_rot written into a slot of a [B, cap, H, D] ring, q strided
    const auto q = (at::randn({2, 4, 2 * 64}) * 3).to(dtype).slice(-1, 0, 64);
    const auto k = (at::randn({2, 4, 64}) * 3).to(dtype);
    const auto w = at::randn({64});
    const auto ang = at::rand({4, 16});
    auto ring = at::zeros({2, 12, 2, 32}, dtype);
    auto slot = ring.slice(1, 4, 8);
    auto q_rot = at::empty({2, 4, 2, 32}, dtype), k_normed = at::empty({2, 4, 2, 32}, dtype);
    liveavatar_rt::qk_norm_rope_out_cpu(q_rot, slot, k_normed, q, k, w, w, eps, ang.cos(), ang.sin());
    const auto [q_want, k_want, kn_want] =
        liveavatar_rt::qk_norm_rope_cpu(q.contiguous(), k, w, w, eps, ang.cos(), ang.sin(), 2);
    expect_equal(slot, k_want, "qk_norm_rope_out ring slot " + name(dtype));
    expect_equal(q_rot, q_want, "qk_norm_rope_out strided q " + name(dtype));
    report(ring.slice(1, 0, 4).abs().sum().item<double>() == 0 && ring.slice(1, 8, 12).abs().sum().item<double>() == 0,
           "qk_norm_rope_out leaves the rest of the ring " + name(dtype));
  }
  const auto x = at::randn({1, 2, 8}), w = at::randn({8}), cs = at::rand({2, 2});
  expect_throws([&] { liveavatar_rt::qk_norm_rope_cpu(x.to(at::kHalf), x.to(at::kHalf), w, w, eps, cs, cs, 2); },
                "float32 or bfloat16", "qk_norm_rope rejects fp16");
  expect_throws([&] { liveavatar_rt::qk_norm_rope_cpu(x, x, w, w, eps, cs, cs, 3); }, "must split into",
                "qk_norm_rope rejects C % H != 0");
  expect_throws([&] { liveavatar_rt::qk_norm_rope_cpu(x, x, w, w, eps, at::rand({2, 3}), cs, 2); },
                "cos/sin must be [L, D/2]", "qk_norm_rope rejects a wrong table");
}

}  // namespace

int main() {
  at::manual_seed(0);
  const int64_t lanes = liveavatar_rt::torch_sum_lanes();
  report(lanes == 4 || lanes == 8 || lanes == 16, "torch_sum_lanes() = " + std::to_string(lanes));
  test_rms_norm();
  test_modulate();
  test_rolling_attention();
  test_amx_rope_row();
  test_qk_norm_rope();
  return summary();
}
