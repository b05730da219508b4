// C interface of the CUDA modulate kernel (csrc/cuda/modulate_kernel.cu). No torch headers:
// the kernel file compiles with plain `nvcc -c` (make nvcc-check), and the torch-side wrapper
// (modulate_binding.cu) calls the launcher with raw pointers and strides.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#ifdef __cplusplus
extern "C" {
#endif

// Element dtype codes of x_norm and out.
enum LiveavatarRtDtype { LIVEAVATAR_RT_F32 = 0, LIVEAVATAR_RT_BF16 = 1 };

// out[b, l, c] = out_dtype(fp32(x[b, l, c]) * (1 + scale[b, f, c]) + shift[b, f, c]),
// f = l / (L / F). x: [B, L, C] with contiguous rows (element strides x_sb, x_sl);
// shift, scale: fp32 [B, F, C] with contiguous rows (stride 0 on a broadcast dim is fine);
// out: contiguous [B, L, C]. Returns cudaErrorInvalidValue on bad codes / shapes, else the
// launch status. Asynchronous on `stream`.
cudaError_t liveavatar_rt_modulate_cuda(
    const void* x, int x_dtype, int64_t x_sb, int64_t x_sl,
    const float* shift, int64_t shift_sb, int64_t shift_sf,
    const float* scale, int64_t scale_sb, int64_t scale_sf,
    void* out, int out_dtype,
    int64_t B, int64_t L, int64_t F, int64_t C, cudaStream_t stream);

#ifdef __cplusplus
}
#endif
