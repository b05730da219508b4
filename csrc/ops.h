// Declarations of the liveavatar_rt C++ ops (CPU kernels in csrc/cpu/).
//
// The schemas and their meaning live in csrc/torch_bindings.cpp; the references they match
// bit for bit are the plain-PyTorch functions in liveavatar_rt/ops/{norm,modulate}.py.
// This header is shared by the Python extension (torch_bindings.cpp) and the CMake build
// (csrc/tests/test_cpu_kernels.cpp), so it pulls in no pybind / torch/extension.h.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace liveavatar_rt {

// x: [..., C] fp32|bf16, weight: [C] (any float dtype; rounded to x's dtype first).
at::Tensor rms_norm_cpu(const at::Tensor& x, const at::Tensor& weight, double eps);
// out: contiguous, same shape and dtype as x.
void rms_norm_out_cpu(at::Tensor& out, const at::Tensor& x, const at::Tensor& weight, double eps);

// x_norm: [B, L, C] fp32|bf16; shift, scale: fp32 [B|1, F, C] with L % F == 0 (one row of
// shift/scale per frame of S = L / F consecutive tokens); out_dtype fp32|bf16.
at::Tensor modulate_cpu(
    const at::Tensor& x_norm, const at::Tensor& shift, const at::Tensor& scale, at::ScalarType out_dtype);
// out: contiguous [B, L, C] fp32|bf16; its dtype is the output dtype.
void modulate_out_cpu(at::Tensor& out, const at::Tensor& x_norm, const at::Tensor& shift, const at::Tensor& scale);

// Lane count of the at::vec::Vectorized<float> sum kernel torch dispatches to here (8 on x86
// with torch 2.13, AVX512 machines included), found once by comparing torch's own row sums
// with replays. rms_norm replays torch's cascade sum with this many lanes, so its fp32
// statistic is bit-identical to `x.float().pow(2).mean(-1)`.
int64_t torch_sum_lanes();

}  // namespace liveavatar_rt
