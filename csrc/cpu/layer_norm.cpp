// layer_norm on CPU: liveavatar_rt/ops/norm.py::layer_norm (F.layer_norm of fp32(x), optional
// affine upcast to fp32), for the block's and the head's small rows.
//
//   mean = sum(x) / C,  var = sum((x - mean)^2) / C,  y = (x - mean) * rsqrt(var + eps) [* w] [+ b]
//
// x: [..., C] fp32|bf16 with a contiguous last dim (other strides free), weight/bias: [C] any
// float dtype or absent -> fp32 [..., C] contiguous. One read of a bf16 row replaces the
// reference's fp32 copy of the whole tensor plus torch's kernel. Two-pass statistics in 16 fp32
// lanes (torch uses a Welford cascade): the results differ from torch's by a few fp32 ulps,
// within tests/tolerances.py's provider rule. Rows run serially below one at::parallel_for
// grain (about 32k elements, the tiny preset's whole [192, 128] block) and split above it.
#include "ops.h"
#include "cpu/cpu_utils.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <optional>
#include <type_traits>
#include <vector>

namespace liveavatar_rt {
namespace cpu {
namespace {

struct LnArgs {
  const void* x;
  RowIndex rows;
  const float* w;  // [C] fp32 or nullptr
  const float* b;
  float* out;      // contiguous
  int64_t C;
  float eps;
};

// bf16 rows are widened into an fp32 scratch row first: GCC keeps the lane sums scalar on
// bf16 loads (perf: ~3x slower than on fp32 rows).
template <typename T>
inline void ln_rows(const LnArgs& a, int64_t r0, int64_t r1) {
  const T* x = static_cast<const T*>(a.x);
  const int64_t C = a.C;
  const float inv_c = 1.f / static_cast<float>(C);
  constexpr bool kWiden = !std::is_same_v<T, float>;
  std::vector<float> wide(kWiden ? C : 0);
  // Local copies: through `a.` every store to `o` might change the pointers (aliasing),
  // which keeps the loops scalar.
  const float* __restrict w = a.w;
  const float* __restrict bias = a.b;
  for (int64_t r = r0; r < r1; ++r) {
    const T* xr = x + a.rows.offset(r);
    const float* xf;
    if constexpr (kWiden) {
      for (int64_t c = 0; c < C; ++c) wide[c] = load_float(xr, c);
      xf = wide.data();
    } else {
      xf = xr;
    }
    float* __restrict o = a.out + r * C;
    const float mean = lane_sum(xf, C, 0.f, false) * inv_c;
    const float var = lane_sum(xf, C, mean, true) * inv_c;
    const float rstd = 1.f / std::sqrt(var + a.eps);
    for (int64_t c = 0; c < C; ++c) o[c] = (xf[c] - mean) * rstd;
    if (w != nullptr)
      for (int64_t c = 0; c < C; ++c) o[c] *= w[c];
    if (bias != nullptr)
      for (int64_t c = 0; c < C; ++c) o[c] += bias[c];
  }
}

LIVEAVATAR_RT_ISA_CLONES
void ln_rows_dispatch(const LnArgs& a, bool bf16, int64_t r0, int64_t r1) {
  if (bf16) return ln_rows<c10::BFloat16>(a, r0, r1);
  return ln_rows<float>(a, r0, r1);
}

}  // namespace
}  // namespace cpu

at::Tensor layer_norm_cpu(const at::Tensor& x_in, const std::optional<at::Tensor>& weight,
                          const std::optional<at::Tensor>& bias, double eps) {
  TORCH_CHECK(x_in.device().is_cpu(), "liveavatar_rt::layer_norm (CPU kernel): x must be on CPU, got ", x_in.device());
  TORCH_CHECK(cpu::is_fp32_or_bf16(x_in.scalar_type()), "liveavatar_rt::layer_norm: x must be float32 or bfloat16, got ",
              x_in.scalar_type());
  TORCH_CHECK(x_in.dim() >= 1, "liveavatar_rt::layer_norm: x must have at least 1 dim ([..., C]), got a scalar");
  const int64_t C = x_in.size(-1);
  const auto w = cpu::affine_fp32(weight, C, "liveavatar_rt::layer_norm", "weight");
  const auto b = cpu::affine_fp32(bias, C, "liveavatar_rt::layer_norm", "bias");
  at::Tensor out = at::empty(x_in.sizes(), x_in.options().dtype(at::kFloat).memory_format(at::MemoryFormat::Contiguous));
  if (x_in.numel() == 0) return out;
  const at::Tensor x = x_in.stride(-1) == 1 || C == 1 ? x_in : x_in.contiguous();
  cpu::LnArgs a{};
  a.x = x.data_ptr(), a.rows = cpu::RowIndex(x), a.out = out.data_ptr<float>(), a.C = C;
  a.w = w ? w->data_ptr<float>() : nullptr;
  a.b = b ? b->data_ptr<float>() : nullptr;
  a.eps = static_cast<float>(eps);
  const bool bf16 = x.scalar_type() == at::kBFloat16;
  at::parallel_for(0, x.numel() / C, cpu::grain_rows(C), [&](int64_t r0, int64_t r1) {
    cpu::ln_rows_dispatch(a, bf16, r0, r1);
  });
  return out;
}

}  // namespace liveavatar_rt
