// Small helpers shared by the CPU kernels: dtype conversion, row addressing, ISA clones.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>

// The kernels are plain loops over contiguous rows. An extension is compiled without torch's
// CPU_CAPABILITY_* defines, so at::vec::Vectorized would fall back to its generic (array)
// form; instead GCC clones the hot row functions for AVX-512 / AVX2 and picks one at load
// time (ifunc), which lets the auto-vectoriser use the wide registers; `flatten` inlines the
// templated loops into each clone (else they stay generic SSE code). The build passes
// -ffp-contract=off: a fused multiply-add would round differently from the reference.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define LIVEAVATAR_RT_ISA_CLONES __attribute__((target_clones("arch=x86-64-v4", "avx2", "default"), flatten))
#else
#define LIVEAVATAR_RT_ISA_CLONES
#endif

namespace liveavatar_rt::cpu {

inline float bf16_bits_to_float(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

// Round to nearest even, NaN -> 0x7FC0: c10::BFloat16(float) written so loops vectorise.
// The NaN test is on the integer bits: with std::isnan (a float compare) GCC kept every loop
// that stores bf16 scalar, ~7x slower (perf: rms_norm's output loop).
inline uint16_t float_to_bf16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  const uint32_t rounded = (u + (((u >> 16) & 1u) + 0x7FFFu)) >> 16;
  const bool nan = (u & 0x7FFFFFFFu) > 0x7F800000u;
  return static_cast<uint16_t>(nan ? 0x7FC0u : rounded);
}

inline float load_float(const float* p, int64_t i) { return p[i]; }
inline float load_float(const c10::BFloat16* p, int64_t i) {
  uint16_t h;
  std::memcpy(&h, p + i, sizeof(h));
  return bf16_bits_to_float(h);
}

inline void store_float(float* p, int64_t i, float v) { p[i] = v; }
inline void store_float(c10::BFloat16* p, int64_t i, float v) {
  const uint16_t h = float_to_bf16_bits(v);
  std::memcpy(p + i, &h, sizeof(h));
}

// The value `v` takes once stored in T (identity for float).
inline float round_to(float v, const float*) { return v; }
inline float round_to(float v, const c10::BFloat16*) { return bf16_bits_to_float(float_to_bf16_bits(v)); }

// Maps a flat row index of a [..., C] tensor whose last dim is contiguous to the element
// offset of that row, for any strides of the leading dims (slices of wider buffers, permuted
// views). Contiguous tensors take the multiply-only path.
struct RowIndex {
  static constexpr int kMaxDims = 8;
  int64_t ndim = 0;
  int64_t sizes[kMaxDims] = {};
  int64_t strides[kMaxDims] = {};
  int64_t row_stride = 0;  // > 0: rows are evenly spaced (offset = row * row_stride)

  RowIndex() = default;
  explicit RowIndex(const at::Tensor& t) {
    const int64_t lead = t.dim() - 1;
    TORCH_CHECK(lead <= kMaxDims, "liveavatar_rt: at most ", kMaxDims, " leading dims, got ", lead);
    ndim = lead;
    for (int64_t d = 0; d < lead; ++d) {
      sizes[d] = t.size(d);
      strides[d] = t.stride(d);
    }
    // Collapse to one stride when every leading dim steps uniformly (contiguous, or a slice
    // of the last dim of a wider buffer); size-1 dims never matter.
    int64_t expect = -1;
    bool uniform = true;
    for (int64_t d = lead - 1; d >= 0; --d) {
      if (sizes[d] == 1) continue;
      if (expect < 0) {
        row_stride = strides[d];
        expect = strides[d] * sizes[d];
      } else if (strides[d] == expect) {
        expect *= sizes[d];
      } else {
        uniform = false;
      }
    }
    if (expect < 0) row_stride = t.size(-1);  // a single row
    if (!uniform || row_stride <= 0) row_stride = 0;
  }

  int64_t offset(int64_t row) const {
    if (row_stride > 0) return row * row_stride;
    int64_t off = 0;
    for (int64_t d = ndim - 1; d >= 0; --d) {
      off += (row % sizes[d]) * strides[d];
      row /= sizes[d];
    }
    return off;
  }
};

// Rows per at::parallel_for task: about GRAIN_SIZE (32768) elements, at least one row.
inline int64_t grain_rows(int64_t row_len) {
  constexpr int64_t kGrainElems = 32768;
  return row_len > 0 ? std::max<int64_t>(1, kGrainElems / row_len) : 1;
}

// sum(x - shift) or sum((x - shift)^2) over a row of C floats in 16 fp32 lanes (vectorises
// without reassociation), then the tail, then the lanes in order: layer_norm's statistics
// (layer_norm.cpp, residual_norm.cpp: one definition, so the fused kernels match it bit for bit).
inline float lane_sum(const float* __restrict x, int64_t C, float shift, bool square) {
  float lane[16] = {};
  int64_t c = 0;
  for (; c + 16 <= C; c += 16) {
    for (int k = 0; k < 16; ++k) {
      const float d = x[c + k] - shift;
      lane[k] += square ? d * d : d;
    }
  }
  float sum = 0.f;
  for (; c < C; ++c) {
    const float d = x[c] - shift;
    sum += square ? d * d : d;
  }
  for (float v : lane) sum += v;
  return sum;
}

// An optional affine weight/bias of a norm over C channels: any float dtype on CPU, upcast to a
// contiguous fp32 [C] (layer_norm.cpp, residual_norm.cpp); errors name `op` and `what`.
inline std::optional<at::Tensor> affine_fp32(const std::optional<at::Tensor>& t, int64_t C, const char* op,
                                             const char* what) {
  if (!t.has_value()) return std::nullopt;
  TORCH_CHECK(t->device().is_cpu(), op, ": ", what, " must be on CPU, got ", t->device());
  TORCH_CHECK(at::isFloatingType(t->scalar_type()) && t->dim() == 1 && t->size(0) == C, op, ": ", what,
              " must be a floating [C] = [", C, "], got ", t->scalar_type(), " ", t->sizes());
  return t->to(at::kFloat).contiguous();
}

inline bool is_fp32_or_bf16(at::ScalarType t) { return t == at::kFloat || t == at::kBFloat16; }

// The block's per-frame form, x [B, F, S, C] against per-frame rows [B|1, F|1, 1, C], as the
// kernels' token form [B, F*S, C] against [B|1, F|1, C] (views when x is contiguous): taking it
// in C++ saves the Python provider its reshapes (a dispatcher round trip each).
inline at::Tensor frames_as_tokens(const at::Tensor& x) { return x.dim() == 4 ? x.flatten(1, 2) : x; }
inline at::Tensor frame_rows(const at::Tensor& t, const at::Tensor& x, const char* op, const char* what) {
  if (x.dim() != 4) return t;
  TORCH_CHECK(t.dim() == 4 && t.size(2) == 1 && (t.size(1) == 1 || t.size(1) == x.size(1)), op, ": with x [B, F, S, C] = ",
              x.sizes(), ", ", what, " must be [B|1, F|1, 1, C], got ", t.sizes());
  return t.squeeze(2);
}

}  // namespace liveavatar_rt::cpu
