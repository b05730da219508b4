// Shared helpers of the C++ kernel tests (CTest): pass/fail reporting, exact and tolerance
// comparisons, expected errors. Each test executable includes this once.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdio>
#include <functional>
#include <string>

namespace liveavatar_rt::test {

inline int g_passed = 0;
inline int g_failed = 0;

inline void report(bool ok, const std::string& what, const std::string& detail = "") {
  (ok ? g_passed : g_failed) += 1;
  std::printf("%s %s%s%s\n", ok ? "ok  " : "FAIL", what.c_str(), detail.empty() ? "" : ": ", detail.c_str());
}

inline void expect_equal(const at::Tensor& got, const at::Tensor& want, const std::string& what) {
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

inline void expect_throws(const std::function<void()>& fn, const std::string& needle, const std::string& what) {
  try {
    fn();
  } catch (const c10::Error& e) {
    const std::string msg = e.what_without_backtrace();
    report(msg.find(needle) != std::string::npos, what, msg.find(needle) != std::string::npos ? "" : msg);
    return;
  }
  report(false, what, "no error raised");
}

inline std::string name(at::ScalarType t) { return t == at::kBFloat16 ? "bf16" : "fp32"; }

// |got - want| <= rel * |want| + atol * max(1, max |want|) elementwise; `want` is a float64
// computation from the same (rounded) inputs. rel covers the output's rounding to its dtype.
inline void expect_close(const at::Tensor& got, const at::Tensor& want, double rel, double atol, const std::string& what) {
  if (got.sizes() != want.sizes()) {
    report(false, what, "shape mismatch " + c10::str(got.sizes()) + " vs " + c10::str(want.sizes()));
    return;
  }
  const auto w = want.to(at::kDouble);
  const auto err = (got.to(at::kDouble) - w).abs();
  const double scale = std::max(1.0, w.abs().max().item<double>());
  const auto bad = err.gt(w.abs() * rel + atol * scale);
  const int64_t n_bad = bad.sum().item<int64_t>();
  report(n_bad == 0, what, n_bad == 0 ? "" : std::to_string(n_bad) + " outside tolerance, max |err| " +
                                                 std::to_string(err.max().item<double>()));
}

// "N passed, M failed" (the closing line CTest logs show) and the exit code.
inline int summary() {
  std::printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed == 0 ? 0 : 1;
}

}  // namespace liveavatar_rt::test
