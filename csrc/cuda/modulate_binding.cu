// Torch-side wrapper of the CUDA modulate kernel: checks, strides, stream, and the CUDA
// implementations of the schemas in csrc/torch_bindings.cpp. Compiled only where torch has
// CUDA (setup.py adds csrc/cuda/*.cu to a CUDAExtension then); the kernel itself is in
// modulate_kernel.cu, which has no torch headers.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "cuda/modulate_kernel.h"
#include "modulate_checks.h"

namespace liveavatar_rt {
namespace {

bool is_fp32_or_bf16(at::ScalarType t) { return t == at::kFloat || t == at::kBFloat16; }

int dtype_code(at::ScalarType t) { return t == at::kBFloat16 ? LIVEAVATAR_RT_BF16 : LIVEAVATAR_RT_F32; }

void check_inputs(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& scale) {
  TORCH_CHECK(x.is_cuda() && shift.device() == x.device() && scale.device() == x.device(),
              "liveavatar_rt::modulate (CUDA kernel): x_norm, shift and scale must be on one CUDA device, got ",
              x.device(), ", ", shift.device(), ", ", scale.device());
  liveavatar_rt::check_modulate_args(x, shift, scale);
}

void modulate_out_cuda(at::Tensor& out, const at::Tensor& x_in, const at::Tensor& shift_in, const at::Tensor& scale_in) {
  check_inputs(x_in, shift_in, scale_in);
  TORCH_CHECK(out.device() == x_in.device(), "liveavatar_rt::modulate_out: out must be on ", x_in.device(),
              ", got ", out.device());
  TORCH_CHECK(is_fp32_or_bf16(out.scalar_type()),
              "liveavatar_rt::modulate_out: out must be float32 or bfloat16, got ", out.scalar_type());
  TORCH_CHECK(out.sizes() == x_in.sizes(), "liveavatar_rt::modulate_out: out shape ", out.sizes(),
              " != x_norm shape ", x_in.sizes());
  TORCH_CHECK(out.is_contiguous(), "liveavatar_rt::modulate_out: out must be contiguous");
  if (x_in.numel() == 0) return;

  const int64_t C = x_in.size(2);
  auto rows_contig = [C](const at::Tensor& t) { return C == 1 || t.stride(2) == 1 ? t : t.contiguous(); };
  const at::Tensor x = rows_contig(x_in), shift = rows_contig(shift_in), scale = rows_contig(scale_in);
  const bool bcast_b = shift.size(0) == 1;
  const c10::cuda::CUDAGuard guard(x.device());
  const cudaError_t err = liveavatar_rt_modulate_cuda(
      x.data_ptr(), dtype_code(x.scalar_type()), x.stride(0), x.stride(1),
      shift.data_ptr<float>(), bcast_b ? 0 : shift.stride(0), shift.stride(1),
      scale.data_ptr<float>(), bcast_b ? 0 : scale.stride(0), scale.stride(1),
      out.data_ptr(), dtype_code(out.scalar_type()),
      x.size(0), x.size(1), shift.size(1), C, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "liveavatar_rt::modulate (CUDA): ", cudaGetErrorString(err));
}

at::Tensor modulate_cuda(
    const at::Tensor& x_norm, const at::Tensor& shift, const at::Tensor& scale, at::ScalarType out_dtype) {
  check_inputs(x_norm, shift, scale);
  TORCH_CHECK(is_fp32_or_bf16(out_dtype), "liveavatar_rt::modulate: out_dtype must be float32 or bfloat16, got ",
              out_dtype);
  at::Tensor out = at::empty(x_norm.sizes(), x_norm.options().dtype(out_dtype));
  modulate_out_cuda(out, x_norm, shift, scale);
  return out;
}

}  // namespace
}  // namespace liveavatar_rt

TORCH_LIBRARY_IMPL(liveavatar_rt, CUDA, m) {
  m.impl("modulate", &liveavatar_rt::modulate_cuda);
  m.impl("modulate_out", &liveavatar_rt::modulate_out_cuda);
}
