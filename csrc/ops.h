// Declarations of the liveavatar_rt C++ ops (CPU kernels in csrc/cpu/).
//
// The schemas and their meaning live in csrc/torch_bindings.cpp; the references they match
// bit for bit are the plain-PyTorch functions in liveavatar_rt/ops/{norm,modulate}.py.
// This header is shared by the Python extension (torch_bindings.cpp) and the CMake build
// (csrc/tests/test_cpu_kernels.cpp), so it pulls in no pybind / torch/extension.h.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <tuple>

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

// Block residual update (csrc/cpu/gated_residual.cpp), as ops/modulate.py::gated_residual:
// fp32(x) + fp32(y) * gate; x, y: [B, L, C] fp32|bf16, gate: fp32 [B|1, F, C] per frame -> fp32.
at::Tensor gated_residual_cpu(const at::Tensor& x, const at::Tensor& y, const at::Tensor& gate);
// out: contiguous fp32 [B, L, C].
void gated_residual_out_cpu(at::Tensor& out, const at::Tensor& x, const at::Tensor& y, const at::Tensor& gate);

// LayerNorm (csrc/cpu/layer_norm.cpp), as ops/norm.py::layer_norm: x [..., C] fp32|bf16,
// optional weight/bias [C] (upcast to fp32) -> fp32 [..., C].
at::Tensor layer_norm_cpu(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                          const std::optional<at::Tensor>& bias, double eps);

// The block's norm chains in one pass (csrc/cpu/residual_norm.cpp), as ops/block_norms.py.
at::Tensor ln_modulate_cpu(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& scale, double eps,
                           at::ScalarType out_dtype);
std::tuple<at::Tensor, at::Tensor> residual_norm_cpu(const at::Tensor& x, const at::Tensor& y,
                                                     const std::optional<at::Tensor>& gate,
                                                     const std::optional<at::Tensor>& weight,
                                                     const std::optional<at::Tensor>& bias,
                                                     const std::optional<at::Tensor>& shift,
                                                     const std::optional<at::Tensor>& scale, double eps,
                                                     bool round_input, at::ScalarType out_dtype);

// GELU, tanh approximation (csrc/cpu/gelu.cpp), as ops/activation.py::gelu_tanh: x fp32|bf16 ->
// same dtype, fp32 inside.
at::Tensor gelu_tanh_cpu(const at::Tensor& x);

// Rolling-cache attention (csrc/cpu/rolling_attention.cpp), as liveavatar_rt/ops/rolling_attention.py:
// q [B, Lq, H, D] (rotated) against [ring_k[:, :valid] ; RoPE(cond_k) with cond_cos/sin [Lc, D/2] fp32]
// and [ring_v[:, :valid] ; cond_v]; fp32 online softmax; output in q's dtype.
at::Tensor rolling_attention_cpu(const at::Tensor& q, const at::Tensor& ring_k, const at::Tensor& ring_v,
                                 int64_t valid, const at::Tensor& cond_k, const at::Tensor& cond_v,
                                 const at::Tensor& cond_cos, const at::Tensor& cond_sin);
// The same with an explicit instruction-set level (tests compare every level): 0 portable, 1 AVX-512,
// 2 AVX512-BF16, 3 AMX (bf16 inputs; fp32 inputs run at most level 1); -1 or a level above
// best_isa (this CPU's best): the best.
int64_t rolling_attention_best_isa();
at::Tensor rolling_attention_cpu_isa(const at::Tensor& q, const at::Tensor& ring_k, const at::Tensor& ring_v,
                                     int64_t valid, const at::Tensor& cond_k, const at::Tensor& cond_v,
                                     const at::Tensor& cond_cos, const at::Tensor& cond_sin, int64_t isa);
// rolling_attention over an E4M3 cache, as liveavatar_rt/ops/kv_fp8.py::rolling_attention_fp8: ring_k,
// ring_v [B, cap, H, D] and cond_k, cond_v [B, Lc, H, D] float8_e4m3fn with fp32 scales ring_ks,
// ring_vs [B, cap, H] and cond_ks, cond_vs [B, Lc, H]; q fp32|bf16. Each row is dequantized to q's
// dtype while gathered (fp32 product, one rounding): equal to rolling_attention_cpu on the dequantized
// tensors bit for bit (at the same instruction-set level `isa`; -1: this CPU's best).
at::Tensor rolling_attention_fp8_cpu(const at::Tensor& q, const at::Tensor& ring_k, const at::Tensor& ring_v,
                                     const at::Tensor& ring_ks, const at::Tensor& ring_vs, int64_t valid,
                                     const at::Tensor& cond_k, const at::Tensor& cond_v, const at::Tensor& cond_ks,
                                     const at::Tensor& cond_vs, const at::Tensor& cond_cos,
                                     const at::Tensor& cond_sin);
at::Tensor rolling_attention_fp8_cpu_isa(const at::Tensor& q, const at::Tensor& ring_k, const at::Tensor& ring_v,
                                         const at::Tensor& ring_ks, const at::Tensor& ring_vs, int64_t valid,
                                         const at::Tensor& cond_k, const at::Tensor& cond_v,
                                         const at::Tensor& cond_ks, const at::Tensor& cond_vs,
                                         const at::Tensor& cond_cos, const at::Tensor& cond_sin, int64_t isa);

// Fused q/k RMSNorm + RoPE (csrc/cpu/qk_norm_rope.cpp), as liveavatar_rt/ops/qk_norm_rope.py:
// q, k [B, L, C] -> (q_rot, k_rot, k_normed) [B, L, H, D]; the out-variant may write k_rot into a ring slot.
std::tuple<at::Tensor, at::Tensor, at::Tensor> qk_norm_rope_cpu(const at::Tensor& q, const at::Tensor& k,
                                                                const at::Tensor& wq, const at::Tensor& wk,
                                                                double eps, const at::Tensor& cos,
                                                                const at::Tensor& sin, int64_t num_heads);
void qk_norm_rope_out_cpu(at::Tensor& q_rot, at::Tensor& k_rot, at::Tensor& k_normed, const at::Tensor& q,
                          const at::Tensor& k, const at::Tensor& wq, const at::Tensor& wk, double eps,
                          const at::Tensor& cos, const at::Tensor& sin);

}  // namespace liveavatar_rt
