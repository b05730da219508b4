"""Convolutions with the published (CUDA autocast) precision rule.

Inputs, weights and bias are rounded to the compute dtype, the convolution accumulates in fp32,
and the output is rounded to the compute dtype. In fp32 every rounding is a no-op.

Why not run the convolution natively in bf16: oneDNN's bf16 conv3d on CPU gives wrong values
when kernel == stride (SPEC 4b), and the published numbers come from cuDNN's fp32 accumulation
anyway. So the reference upcasts the rounded operands and runs an fp32 kernel.

Padding is whatever the caller asks; the VAE pads explicitly (causal time padding) and passes 0.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .registry import define


def _rounded_fp32(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """t rounded to `dtype`, then held in fp32 for the fp32 kernel."""
    return None if t is None else t.to(dtype).float()


@define("conv3d")
def conv3d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride, padding, dtype: torch.dtype) -> torch.Tensor:
    """x: [B, C, T, H, W], weight: [D, C, kt, kh, kw], bias: [D] -> [B, D, T', H', W'] in `dtype`."""
    y = F.conv3d(_rounded_fp32(x, dtype), _rounded_fp32(weight, dtype), _rounded_fp32(bias, dtype), stride, padding)
    return y.to(dtype)


@define("conv2d")
def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride, padding, dtype: torch.dtype) -> torch.Tensor:
    """x: [B, C, H, W], weight: [D, C, kh, kw], bias: [D] -> [B, D, H', W'] in `dtype`."""
    y = F.conv2d(_rounded_fp32(x, dtype), _rounded_fp32(weight, dtype), _rounded_fp32(bias, dtype), stride, padding)
    return y.to(dtype)
