// Each CPU kernel (csrc/cpu/) against a straightforward at:: computation of the same formula,
// bit for bit, plus its input checks. Built and run by CMake/CTest (`make ctest`).
#include <ATen/ATen.h>

#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "ops.h"

namespace {

int g_passed = 0;
int g_failed = 0;

void report(bool ok, const std::string& what, const std::string& detail = "") {
  (ok ? g_passed : g_failed) += 1;
  std::printf("%s %s%s%s\n", ok ? "ok  " : "FAIL", what.c_str(), detail.empty() ? "" : ": ", detail.c_str());
}

void expect_equal(const at::Tensor& got, const at::Tensor& want, const std::string& what) {
  if (got.sizes() != want.sizes() || got.scalar_type() != want.scalar_type()) {
    report(false, what, "shape/dtype mismatch");
    return;
  }
  if (at::equal(got, want)) {
    report(true, what);
    return;
  }
  const auto diff = (got.to(at::kDouble) - want.to(at::kDouble)).abs();
  report(false, what,
         std::to_string(diff.gt(0).sum().item<int64_t>()) + " of " + std::to_string(got.numel()) +
             " differ, max |diff| " + std::to_string(diff.max().item<double>()));
}

void expect_throws(const std::function<void()>& fn, const std::string& needle, const std::string& what) {
  try {
    fn();
  } catch (const c10::Error& e) {
    const std::string msg = e.what_without_backtrace();
    report(msg.find(needle) != std::string::npos, what, msg.find(needle) != std::string::npos ? "" : msg);
    return;
  }
  report(false, what, "no error raised");
}

std::string name(at::ScalarType t) { return t == at::kBFloat16 ? "bf16" : "fp32"; }

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

}  // namespace

int main() {
  at::manual_seed(0);
  const int64_t lanes = liveavatar_rt::torch_sum_lanes();
  report(lanes == 4 || lanes == 8 || lanes == 16, "torch_sum_lanes() = " + std::to_string(lanes));
  test_rms_norm();
  test_modulate();
  std::printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed == 0 ? 0 : 1;
}
