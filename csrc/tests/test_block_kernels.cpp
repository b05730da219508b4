// The block's small CPU kernels (csrc/cpu/gated_residual.cpp, layer_norm.cpp, gelu.cpp) against
// straightforward at:: computations: gated_residual bit for bit, layer_norm and gelu_tanh
// within a few fp32 ulps (another summation order / exp instead of tanh), plus input checks.
// Built and run by CMake/CTest (`make ctest`).
#include <ATen/ATen.h>

#include <array>
#include <cmath>
#include <string>
#include <vector>

#include "ops.h"
#include "tests/test_util.h"

namespace {

using namespace liveavatar_rt::test;

// liveavatar_rt/ops/modulate.py::gated_residual with a per-frame gate [B, F, C]
at::Tensor gated_ref(const at::Tensor& x, const at::Tensor& y, const at::Tensor& gate) {
  const int64_t B = x.size(0), L = x.size(1), C = x.size(2), F = gate.size(1);
  const auto x4 = x.reshape({B, F, L / F, C}).to(at::kFloat), y4 = y.reshape({B, F, L / F, C}).to(at::kFloat);
  return (x4 + y4 * gate.unsqueeze(2)).reshape({B, L, C});
}

void test_gated_residual() {
  for (auto xt : {at::kFloat, at::kBFloat16}) {
    for (auto yt : {at::kFloat, at::kBFloat16}) {
      for (const auto& [B, F, S, C] : std::vector<std::array<int64_t, 4>>{{1, 3, 64, 128}, {2, 2, 3, 67}, {1, 1, 1, 5}}) {
        const auto x = (at::randn({B, F * S, C}) * 3).to(xt), y = (at::randn({B, F * S, C}) * 3).to(yt);
        const auto gate = at::randn({B, F, C});
        expect_equal(liveavatar_rt::gated_residual_cpu(x, y, gate), gated_ref(x, y, gate),
                     "gated_residual x " + name(xt) + " y " + name(yt) + " " + c10::str(x.sizes()));
      }
    }
    // strided rows (slices of a wider buffer), a batch-broadcast gate, the out-variant
    const auto wide = (at::randn({2, 6, 256}) * 3).to(xt);
    const auto x = wide.slice(2, 0, 128), y = wide.slice(2, 128, 256);
    const auto gate = at::randn({1, 3, 128});
    const auto want = gated_ref(x, y, gate.expand({2, 3, 128}));
    expect_equal(liveavatar_rt::gated_residual_cpu(x, y, gate), want, "gated_residual strided " + name(xt));
    auto out = at::empty({2, 6, 128});
    liveavatar_rt::gated_residual_out_cpu(out, x, y, gate);
    expect_equal(out, want, "gated_residual_out " + name(xt));
  }
  const auto x = at::randn({1, 6, 8});
  expect_throws([&] { liveavatar_rt::gated_residual_cpu(x, x, at::randn({1, 4, 8})); }, "must divide",
                "gated_residual rejects F not dividing L");
  expect_throws([&] { liveavatar_rt::gated_residual_cpu(x, x, at::randn({1, 3, 8}).to(at::kBFloat16)); },
                "gate must be float32", "gated_residual rejects a bf16 gate");
}

// liveavatar_rt/ops/norm.py::layer_norm in float64 (before the output's rounding to fp32).
at::Tensor layer_norm_ref(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, double eps) {
  const auto xd = x.to(at::kDouble);
  const auto mean = xd.mean(-1, true), var = (xd - mean).pow(2).mean(-1, true);
  auto y = (xd - mean) / at::sqrt(var + eps);
  if (w.defined()) y = y * w.to(at::kFloat).to(at::kDouble);
  if (b.defined()) y = y + b.to(at::kFloat).to(at::kDouble);
  return y;
}

void test_layer_norm() {
  const double eps = 1e-6;
  for (auto dtype : {at::kFloat, at::kBFloat16}) {
    for (const auto& shape : std::vector<std::vector<int64_t>>{{1, 192, 128}, {3, 67}, {1, 40000}, {64, 5120}, {4, 1}}) {
      const auto x = (at::randn(shape) * 3 + 2).to(dtype);
      const int64_t C = shape.back();
      const auto w = at::randn({C}).to(at::kBFloat16), b = at::randn({C});
      expect_close(liveavatar_rt::layer_norm_cpu(x, std::nullopt, std::nullopt, eps),
                   layer_norm_ref(x, at::Tensor(), at::Tensor(), eps), 1e-5, 1e-5,
                   "layer_norm " + name(dtype) + " " + c10::str(x.sizes()));
      expect_close(liveavatar_rt::layer_norm_cpu(x, w, b, eps), layer_norm_ref(x, w, b, eps), 1e-5, 1e-5,
                   "layer_norm affine " + name(dtype) + " " + c10::str(x.sizes()));
    }
    const auto t = (at::randn({128, 6}) * 3).to(dtype).t();  // strided last dim
    expect_close(liveavatar_rt::layer_norm_cpu(t, std::nullopt, std::nullopt, eps),
                 layer_norm_ref(t, at::Tensor(), at::Tensor(), eps), 1e-5, 1e-5, "layer_norm transposed " + name(dtype));
  }
  expect_throws([&] { liveavatar_rt::layer_norm_cpu(at::randn({2, 4}).to(at::kHalf), std::nullopt, std::nullopt, 1e-6); },
                "float32 or bfloat16", "layer_norm rejects fp16");
  expect_throws([&] { liveavatar_rt::layer_norm_cpu(at::randn({2, 4}), at::randn({5}), std::nullopt, 1e-6); },
                "weight must be a floating [C]", "layer_norm rejects a wrong weight");
}

void test_gelu_tanh() {
  for (auto dtype : {at::kFloat, at::kBFloat16}) {
    auto x = (at::randn({1, 192, 256}) * 4).to(dtype);
    x.view({-1}).slice(0, 0, 3).copy_(at::tensor({-60.0, 60.0, 0.0}).to(dtype));  // saturated tails, zero
    const auto xd = x.to(at::kDouble);
    const auto want = 0.5 * xd * (1 + at::tanh(std::sqrt(2.0 / M_PI) * (xd + 0.044715 * xd.pow(3))));
    // fp32: a few ulps of the exp; bf16: one rounding of the output
    const double rel = dtype == at::kBFloat16 ? 1.0 / 128 : 1e-5;
    expect_close(liveavatar_rt::gelu_tanh_cpu(x), want, rel, 1e-6, "gelu_tanh " + name(dtype));
    expect_close(liveavatar_rt::gelu_tanh_cpu(x.transpose(1, 2)), want.transpose(1, 2), rel, 1e-6,
                 "gelu_tanh strided " + name(dtype));
  }
  expect_throws([&] { liveavatar_rt::gelu_tanh_cpu(at::randn({4}).to(at::kDouble)); }, "float32 or bfloat16",
                "gelu_tanh rejects fp64");
}

}  // namespace

int main() {
  at::manual_seed(0);
  test_gated_residual();
  test_layer_norm();
  test_gelu_tanh();
  return summary();
}
