"""`cuda` provider: the CUDA kernel of `liveavatar_rt._C` for `modulate` (and the block's norm
chains of ops/block_norms.py, which use it)
(csrc/cuda/modulate_kernel.cu, bound for the CUDA dispatch key in csrc/cuda/modulate_binding.cu).

Bit-identical to the reference: every step is an fp32 op rounded to nearest (no FMA), then one
rounding to the output dtype, as ops/modulate.py computes it (tests/ops/test_cuda_modulate.py).
The CUDA sources are compiled only where torch has CUDA and CUDA_HOME is set at build time
(setup.py); `supports(device, dtype)` refuses, with the reason, off CUDA, when the extension is
not built, when it was built without its CUDA kernels, or outside bf16/fp32. The device is
checked first, so resolving a CPU table never loads anything here.

Call forms as the CPU provider's token form (cpu_providers.modulate_as_tokens): x_norm
[B, L, C] or [B, F, S, C] with fp32 shift/scale per token / frame / sample on the same device;
anything else runs the reference.
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import _ext
from .block_norms import ln_modulate_with, residual_norm_with
from .cpu_providers import _DTYPES, modulate_as_tokens
from .registry import OPS

PRIORITY = 20  # above the C++ CPU providers; the two never support the same device
NO_CUDA_KERNELS = ("liveavatar_rt._C was built without CUDA kernels (setup.py compiles csrc/cuda/*.cu only "
                   "where torch has CUDA and CUDA_HOME is set)")


def has_cuda_kernels() -> bool:
    """True when the loaded extension registered `liveavatar_rt::modulate` for the CUDA dispatch key."""
    if not _ext.available():
        return False
    try:
        return bool(torch._C._dispatch_has_kernel_for_dispatch_key("liveavatar_rt::modulate", "CUDA"))
    except (AttributeError, RuntimeError):  # private API moved, or the op is not registered
        return False


def supports(device: torch.device, dtype: torch.dtype) -> Optional[str]:
    device = torch.device(device)
    if device.type != "cuda":
        return f"device {device} is not CUDA"
    if not _ext.available():
        return f"liveavatar_rt._C not built: {_ext.load_error()}"
    if not has_cuda_kernels():
        return NO_CUDA_KERNELS
    if dtype not in _DTYPES:
        return f"dtype {dtype} is not bf16/fp32"
    return None


def modulate(x_norm: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """out = out_dtype(fp32(x_norm) * (1 + scale) + shift), as ops/modulate.py, on CUDA."""
    return modulate_as_tokens(x_norm, shift, scale, out_dtype, "cuda")


def ln_modulate(x, shift, scale, eps: float, out_dtype: torch.dtype) -> torch.Tensor:
    """ops/block_norms.py's chain with this modulate kernel (the norm: the reference)."""
    return ln_modulate_with(modulate, x, shift, scale, eps, out_dtype)


def residual_norm(x, y, gate, weight, bias, shift, scale, eps: float, round_input: bool, out_dtype: torch.dtype):
    """ops/block_norms.py's chain with this modulate kernel (residual and norm: the references)."""
    return residual_norm_with(modulate, x, y, gate, weight, bias, shift, scale, eps, round_input, out_dtype)


OPS["modulate"].register("cuda", modulate, priority=PRIORITY, supports=supports)
OPS["ln_modulate"].register("cuda", ln_modulate, priority=PRIORITY, supports=supports)
OPS["residual_norm"].register("cuda", residual_norm, priority=PRIORITY, supports=supports)
