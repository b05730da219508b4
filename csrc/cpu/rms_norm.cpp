// rms_norm on CPU: WanRMSNorm, bit-identical to liveavatar_rt/ops/norm.py::rms_norm.
//
//   y   = round_to_x_dtype(fp32(x) * rsqrt(mean(fp32(x)^2) + eps))
//   out = round_to_x_dtype(y * round_to_x_dtype(weight))
//
// One pass per row: the sum of squares, then the scaled row. The reference's statistic is
// torch's CPU `sum` then `/ C`; `sum` is a cascade sum over at::vec::Vectorized<float> lanes
// (at::native::cascade_sum / multi_row_sum, aten/src/ATen/native/cpu/SumKernel.cpp), so the
// row sum below replays that algorithm with the lane count torch uses here (calibrated once,
// torch_sum_lanes) and, for a single row of >= 32768 elements, torch's two-pass threaded
// split. With the same additions in the same order every output is bit-identical. A row
// whose last dim is strided takes its statistic from torch ops instead (slow path).
#include "ops.h"
#include "cpu/cpu_utils.h"

#include <ATen/Parallel.h>
#include <ATen/ops/add.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/pow.h>
#include <ATen/ops/rsqrt.h>
#include <ATen/ops/sum.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <array>
#include <type_traits>
#include <vector>

namespace liveavatar_rt {
namespace cpu {
namespace {

constexpr int64_t kGrainSize = 32768;  // at::internal::GRAIN_SIZE

// N fp32 lanes: one at::vec::Vectorized<float> of torch's sum kernel (N == 1: a scalar).
template <int N>
struct Lanes {
  float v[N];
  void zero() {
    for (int i = 0; i < N; ++i) v[i] = 0.f;
  }
  void add(const Lanes& o) {
    for (int i = 0; i < N; ++i) v[i] += o.v[i];
  }
};

// Elements [i*N, i*N + N) of the row as fp32, squared when SQ (the reference's `xf.pow(2)`).
template <int N, bool SQ, typename T>
inline Lanes<N> load_lanes(const T* row, int64_t i) {
  Lanes<N> r;
  for (int k = 0; k < N; ++k) {
    const float f = load_float(row, i * N + k);
    r.v[k] = SQ ? f * f : f;
  }
  return r;
}

inline int64_t ceil_log2(int64_t x) {  // at::native::utils::CeilLog2
  if (x <= 2) return 1;
  return 64 - __builtin_clzll(static_cast<uint64_t>(x) - 1);
}

inline int64_t divup(int64_t a, int64_t b) { return (a + b - 1) / b; }

// multi_row_sum<Vectorized<float>, 4>: element (i, k) is lane-vector 4*i + k of the row.
// Sums are chunked in levels so only numbers of similar magnitude are added together.
template <int N, bool SQ, typename T>
inline std::array<Lanes<N>, 4> multi_row_sum(const T* row, int64_t size) {
  constexpr int64_t kLevels = 4;
  constexpr int64_t kRows = 4;
  const int64_t level_power = std::max<int64_t>(4, ceil_log2(size) / kLevels);
  const int64_t level_step = int64_t(1) << level_power;
  const int64_t level_mask = level_step - 1;

  Lanes<N> acc[kLevels][kRows];
  for (auto& level : acc)
    for (auto& a : level) a.zero();

  int64_t i = 0;
  for (; i + level_step <= size;) {
    for (int64_t j = 0; j < level_step; ++j, ++i) {
      for (int64_t k = 0; k < kRows; ++k) acc[0][k].add(load_lanes<N, SQ>(row, i * kRows + k));
    }
    for (int64_t j = 1; j < kLevels; ++j) {
      for (int64_t k = 0; k < kRows; ++k) {
        acc[j][k].add(acc[j - 1][k]);
        acc[j - 1][k].zero();
      }
      if ((i & (level_mask << (j * level_power))) != 0) break;
    }
  }
  for (; i < size; ++i) {
    for (int64_t k = 0; k < kRows; ++k) acc[0][k].add(load_lanes<N, SQ>(row, i * kRows + k));
  }
  for (int64_t j = 1; j < kLevels; ++j) {
    for (int64_t k = 0; k < kRows; ++k) acc[0][k].add(acc[j][k]);
  }
  return {acc[0][0], acc[0][1], acc[0][2], acc[0][3]};
}

// row_sum with ilp_factor 4 over `count` lane-vectors of N.
template <int N, bool SQ, typename T>
inline Lanes<N> row_sum(const T* row, int64_t count) {
  const int64_t size_ilp = count / 4;
  auto partial = multi_row_sum<N, SQ>(row, size_ilp);
  for (int64_t i = size_ilp * 4; i < count; ++i) partial[0].add(load_lanes<N, SQ>(row, i));
  for (int k = 1; k < 4; ++k) partial[0].add(partial[k]);
  return partial[0];
}

// Sum of row[0:n] (squared when SQ) in the order of torch's cascade_sum for a contiguous inner
// reduction: vectorized_inner_sum when n >= LANES, scalar_inner_sum otherwise.
template <int LANES, bool SQ, typename T>
inline float cascade_sum(const T* row, int64_t n) {
  if (n < LANES) return row_sum<1, SQ>(row, n).v[0];
  const int64_t vec_count = n / LANES;
  const Lanes<LANES> vacc = row_sum<LANES, SQ>(row, vec_count);
  float acc = 0.f;
  for (int64_t k = vec_count * LANES; k < n; ++k) acc += load_lanes<1, SQ>(row, k).v[0];
  for (int k = 0; k < LANES; ++k) acc += vacc.v[k];
  return acc;
}

template <int LANES, typename T>
inline float sum_squares(const T* row, int64_t n) {
  return cascade_sum<LANES, true>(row, n);
}

// The statistic's sum as torch computes it for one row of C elements. When the whole
// reduction has a single output (x holds one row) of >= GRAIN_SIZE elements and torch runs
// more than one thread, its parallel_reduce takes two_pass_reduction: each thread sums one
// contiguous chunk into its own slot of a [threads] buffer, which is then summed the same way.
// `split_threads` is that thread count (1: no split); the split is replayed serially.
template <int LANES, typename T>
inline float statistic_sum(const T* row, int64_t C, int64_t split_threads) {
  if (split_threads > 1 && C >= kGrainSize) {
    const int64_t tasks = C > kGrainSize ? std::min(split_threads, divup(C, kGrainSize)) : 1;
    const int64_t chunk = divup(C, tasks);
    std::vector<float> partial(split_threads, 0.f);
    for (int64_t t = 0; t < tasks && t * chunk < C; ++t) {
      partial[t] = sum_squares<LANES>(row + t * chunk, std::min(chunk, C - t * chunk));
    }
    return cascade_sum<LANES, false>(partial.data(), split_threads);
  }
  return sum_squares<LANES>(row, C);
}

struct RmsArgs {
  const void* x;
  RowIndex rows;
  const float* w;    // weight.to(x.dtype) as fp32, [C]
  const float* inv;  // per-row 1 / rms computed by torch (strided-row fallback), or nullptr
  void* out;         // contiguous
  int64_t C;
  float eps;
  int64_t split_threads;  // see statistic_sum
};

// bf16 rows are widened into an fp32 scratch row first: the statistic then runs the fp32
// replay (the same values, so the same sum), which vectorises; replaying it on bf16 loads
// directly measured ~6x slower than the fp32 path.
template <int LANES, typename T>
inline void rms_rows(const RmsArgs& a, int64_t r0, int64_t r1) {
  const T* x = static_cast<const T*>(a.x);
  const int64_t C = a.C;
  constexpr bool kWiden = !std::is_same_v<T, float>;
  std::vector<float> wide(kWiden ? C : 0);
  // A local copy: through `a.w` every store to `o` might change the pointer (aliasing), which
  // kept the output loop scalar.
  const float* __restrict w = a.w;
  for (int64_t r = r0; r < r1; ++r) {
    const T* xr = x + a.rows.offset(r);
    T* o = static_cast<T*>(a.out) + r * C;
    const float* xf = nullptr;
    if constexpr (kWiden) {
      for (int64_t c = 0; c < C; ++c) wide[c] = load_float(xr, c);
      xf = wide.data();
    } else {
      xf = xr;
    }
    float inv;
    if (a.inv != nullptr) {
      inv = a.inv[r];
    } else {
      // torch: sum(...).div_(C), `+ eps` (eps rounded to fp32), then rsqrt == 1 / sqrt.
      const float mean = statistic_sum<LANES>(xf, C, a.split_threads) / static_cast<float>(C);
      inv = 1.f / std::sqrt(mean + a.eps);
    }
    for (int64_t c = 0; c < C; ++c) {
      const float y = round_to(xf[c] * inv, x);
      store_float(o, c, y * w[c]);
    }
  }
}

// Non-template entry points so the ISA clones apply (the templates inline into each clone).
LIVEAVATAR_RT_ISA_CLONES
void rms_rows_f32(const RmsArgs& a, int64_t lanes, int64_t r0, int64_t r1) {
  switch (lanes) {
    case 16: return rms_rows<16, float>(a, r0, r1);
    case 4: return rms_rows<4, float>(a, r0, r1);
    default: return rms_rows<8, float>(a, r0, r1);
  }
}

LIVEAVATAR_RT_ISA_CLONES
void rms_rows_bf16(const RmsArgs& a, int64_t lanes, int64_t r0, int64_t r1) {
  switch (lanes) {
    case 16: return rms_rows<16, c10::BFloat16>(a, r0, r1);
    case 4: return rms_rows<4, c10::BFloat16>(a, r0, r1);
    default: return rms_rows<8, c10::BFloat16>(a, r0, r1);
  }
}

void check_inputs(const at::Tensor& x, const at::Tensor& weight) {
  TORCH_CHECK(x.device().is_cpu(), "liveavatar_rt::rms_norm (CPU kernel): x must be on CPU, got ", x.device());
  TORCH_CHECK(weight.device().is_cpu(), "liveavatar_rt::rms_norm: weight must be on CPU, got ", weight.device());
  TORCH_CHECK(is_fp32_or_bf16(x.scalar_type()),
              "liveavatar_rt::rms_norm: x must be float32 or bfloat16, got ", x.scalar_type());
  TORCH_CHECK(at::isFloatingType(weight.scalar_type()),
              "liveavatar_rt::rms_norm: weight must be a floating dtype, got ", weight.scalar_type());
  TORCH_CHECK(x.dim() >= 1, "liveavatar_rt::rms_norm: x must have at least 1 dim ([..., C]), got a scalar");
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == x.size(-1),
              "liveavatar_rt::rms_norm: weight must have shape [C] = [", x.size(-1), "], got ", weight.sizes());
}

}  // namespace
}  // namespace cpu

int64_t torch_sum_lanes() {
  static const int64_t lanes = [] {
    // Calibrate once against torch itself: the lane count is not simply the CPU capability
    // (torch 2.13 registers its sum kernel without an AVX-512 variant, so AVX512 machines
    // run the 8-lane AVX2 kernel). Sum a [16, 1000] block with torch, replay it with each
    // candidate, keep the one that matches every row.
    c10::impl::ExcludeDispatchKeyGuard no_python(
        c10::DispatchKeySet({c10::DispatchKey::Python, c10::DispatchKey::PythonTLSSnapshot}));
    c10::InferenceMode inference_mode;
    constexpr int64_t kRows = 16, kCols = 1000;
    at::Tensor x = at::empty({kRows, kCols}, at::TensorOptions().dtype(at::kFloat));
    float* xp = x.data_ptr<float>();
    uint32_t s = 12345;  // a fixed LCG: values in [0, 128) of mixed magnitudes
    for (int64_t i = 0; i < kRows * kCols; ++i) {
      s = (s * 1103515245u + 12345u) & 0x7fffffffu;
      xp[i] = static_cast<float>((s >> 8) & 0xffffu) / 65536.f * static_cast<float>(1u << ((s >> 4) & 7u));
    }
    const at::Tensor sums = at::sum(at::pow(x, 2), {-1}).contiguous();
    const float* sp = sums.data_ptr<float>();
    auto matches = [&](auto lanes_tag) {
      constexpr int L = decltype(lanes_tag)::value;
      for (int64_t r = 0; r < kRows; ++r) {
        if (cpu::sum_squares<L>(xp + r * kCols, kCols) != sp[r]) return false;
      }
      return true;
    };
    if (matches(std::integral_constant<int, 8>{})) return int64_t(8);
    if (matches(std::integral_constant<int, 16>{})) return int64_t(16);
    if (matches(std::integral_constant<int, 4>{})) return int64_t(4);
    // Unknown summation order: keep 8 (the statistic may then differ by an fp32 ulp).
    return int64_t(8);
  }();
  return lanes;
}

void rms_norm_out_cpu(at::Tensor& out, const at::Tensor& x_in, const at::Tensor& weight, double eps) {
  cpu::check_inputs(x_in, weight);
  TORCH_CHECK(out.device().is_cpu(), "liveavatar_rt::rms_norm_out: out must be on CPU, got ", out.device());
  TORCH_CHECK(out.scalar_type() == x_in.scalar_type(), "liveavatar_rt::rms_norm_out: out dtype ",
              out.scalar_type(), " != x dtype ", x_in.scalar_type());
  TORCH_CHECK(out.sizes() == x_in.sizes(), "liveavatar_rt::rms_norm_out: out shape ", out.sizes(),
              " != x shape ", x_in.sizes());
  TORCH_CHECK(out.is_contiguous(), "liveavatar_rt::rms_norm_out: out must be contiguous");
  if (x_in.numel() == 0) return;

  const int64_t C = x_in.size(-1);
  const int64_t rows = x_in.numel() / C;
  // Rows must be contiguous; any strides of the leading dims are fine. A strided last dim
  // (e.g. a transposed view) is copied, and its statistic taken from torch itself: the
  // reference sums such a row in another order, which the fused sum does not replay.
  const bool strided_rows = x_in.stride(-1) != 1 && C > 1;
  const at::Tensor x = strided_rows ? x_in.contiguous() : x_in;
  at::Tensor inv;
  if (strided_rows) {
    inv = at::rsqrt(at::add(at::pow(x_in.to(at::kFloat), 2).mean(-1, /*keepdim=*/true), eps)).contiguous();
  }
  // The reference multiplies by weight.to(x.dtype): round the weight once, keep it as fp32.
  const at::Tensor w = weight.to(x.scalar_type()).to(at::kFloat).contiguous();

  cpu::RmsArgs a{};
  a.x = x.data_ptr();
  a.rows = cpu::RowIndex(x);
  a.w = w.data_ptr<float>();
  a.inv = strided_rows ? inv.data_ptr<float>() : nullptr;
  a.out = out.data_ptr();
  a.C = C;
  a.eps = static_cast<float>(eps);
  // torch splits a single-output reduction over its threads (checked here, outside our own
  // parallel_for, as torch checks it outside any parallel region).
  a.split_threads = rows == 1 && !at::in_parallel_region() ? at::get_num_threads() : 1;
  const int64_t lanes = torch_sum_lanes();
  const bool bf16 = x.scalar_type() == at::kBFloat16;
  at::parallel_for(0, rows, cpu::grain_rows(C), [&](int64_t r0, int64_t r1) {
    if (bf16) {
      cpu::rms_rows_bf16(a, lanes, r0, r1);
    } else {
      cpu::rms_rows_f32(a, lanes, r0, r1);
    }
  });
}

at::Tensor rms_norm_cpu(const at::Tensor& x, const at::Tensor& weight, double eps) {
  cpu::check_inputs(x, weight);
  at::Tensor out = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  rms_norm_out_cpu(out, x, weight, eps);
  return out;
}

}  // namespace liveavatar_rt
