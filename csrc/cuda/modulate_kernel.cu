// modulate on CUDA, written without torch headers (plain CUDA C++; `make nvcc-check`).
//
//   out[b, l, c] = out_dtype(fp32(x_norm[b, l, c]) * (1 + scale[b, f, c]) + shift[b, f, c])
//
// Same rounding as liveavatar_rt/ops/modulate.py: every step is an fp32 op rounded to
// nearest (__fadd_rn / __fmul_rn, which nvcc never fuses into an FMA), then one rounding to
// the output dtype (__float2bfloat16_rn, round to nearest even).
#include "modulate_kernel.h"

#include <cuda_bf16.h>

namespace {

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_f32(float v);
template <>
__device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// One block per row (b, l); threads stride over the C channels, so loads and stores of a
// row are coalesced and shift/scale rows are shared by the S tokens of a frame via L2.
template <typename TI, typename TO>
__global__ void modulate_kernel(
    const TI* __restrict__ x, int64_t x_sb, int64_t x_sl,
    const float* __restrict__ shift, int64_t shift_sb, int64_t shift_sf,
    const float* __restrict__ scale, int64_t scale_sb, int64_t scale_sf,
    TO* __restrict__ out, int64_t L, int64_t S, int64_t C) {
  const int64_t row = blockIdx.x;
  const int64_t b = row / L;
  const int64_t l = row - b * L;
  const int64_t f = l / S;
  const TI* xr = x + b * x_sb + l * x_sl;
  const float* sh = shift + b * shift_sb + f * shift_sf;
  const float* sc = scale + b * scale_sb + f * scale_sf;
  TO* o = out + row * C;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    const float t = __fadd_rn(1.f, sc[c]);
    const float p = __fmul_rn(to_f32(xr[c]), t);
    o[c] = from_f32<TO>(__fadd_rn(p, sh[c]));
  }
}

template <typename TI, typename TO>
cudaError_t launch(
    const void* x, int64_t x_sb, int64_t x_sl, const float* shift, int64_t shift_sb, int64_t shift_sf,
    const float* scale, int64_t scale_sb, int64_t scale_sf, void* out, int64_t B, int64_t L, int64_t F,
    int64_t C, cudaStream_t stream) {
  const int64_t rows = B * L;
  if (rows > 0x7fffffffLL) return cudaErrorInvalidValue;  // gridDim.x limit
  const int threads = C >= 1024 ? 256 : (C >= 256 ? 128 : 64);
  modulate_kernel<TI, TO><<<static_cast<unsigned>(rows), threads, 0, stream>>>(
      static_cast<const TI*>(x), x_sb, x_sl, shift, shift_sb, shift_sf, scale, scale_sb, scale_sf,
      static_cast<TO*>(out), L, L / F, C);
  return cudaGetLastError();
}

}  // namespace

extern "C" cudaError_t liveavatar_rt_modulate_cuda(
    const void* x, int x_dtype, int64_t x_sb, int64_t x_sl,
    const float* shift, int64_t shift_sb, int64_t shift_sf,
    const float* scale, int64_t scale_sb, int64_t scale_sf,
    void* out, int out_dtype,
    int64_t B, int64_t L, int64_t F, int64_t C, cudaStream_t stream) {
  if (B < 0 || L < 0 || C < 0 || F <= 0 || L % F != 0) return cudaErrorInvalidValue;
  if (B == 0 || L == 0 || C == 0) return cudaSuccess;
  const bool x_bf16 = x_dtype == LIVEAVATAR_RT_BF16, out_bf16 = out_dtype == LIVEAVATAR_RT_BF16;
  if ((!x_bf16 && x_dtype != LIVEAVATAR_RT_F32) || (!out_bf16 && out_dtype != LIVEAVATAR_RT_F32)) {
    return cudaErrorInvalidValue;
  }
  if (x_bf16 && out_bf16) {
    return launch<__nv_bfloat16, __nv_bfloat16>(x, x_sb, x_sl, shift, shift_sb, shift_sf, scale, scale_sb,
                                                scale_sf, out, B, L, F, C, stream);
  }
  if (x_bf16) {
    return launch<__nv_bfloat16, float>(x, x_sb, x_sl, shift, shift_sb, shift_sf, scale, scale_sb, scale_sf, out,
                                        B, L, F, C, stream);
  }
  if (out_bf16) {
    return launch<float, __nv_bfloat16>(x, x_sb, x_sl, shift, shift_sb, shift_sf, scale, scale_sb, scale_sf, out,
                                        B, L, F, C, stream);
  }
  return launch<float, float>(x, x_sb, x_sl, shift, shift_sb, shift_sf, scale, scale_sb, scale_sf, out, B, L, F, C,
                              stream);
}
