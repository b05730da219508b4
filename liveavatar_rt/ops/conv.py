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

from .registry import OPS, define


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


# ---- provider `mkldnn`: the same fp32 convolution through oneDNN directly --------------------
# F.conv3d on CPU in fp32 falls back to the im2col `slow_conv3d` for the VAE's shapes; calling
# oneDNN's fp32 convolution is ~9x faster with the same rule (rounded operands, fp32
# accumulation, one rounding of the output), only the accumulation order differs.

def _mkldnn_supports(device: torch.device, dtype: torch.dtype):
    if device.type != "cpu":
        return f"device {device} is not CPU"
    if not torch.backends.mkldnn.is_available():
        return "torch was built without oneDNN (mkldnn)"
    return None


def _triple(v, n: int) -> list[int]:
    return list(v) if isinstance(v, (tuple, list)) else [int(v)] * n


def _mkldnn_conv(n: int):
    def conv(x, weight, bias, stride, padding, dtype):
        xf, wf, bf = _rounded_fp32(x, dtype).contiguous(), _rounded_fp32(weight, dtype).contiguous(), _rounded_fp32(bias, dtype)
        y = torch.mkldnn_convolution(xf, wf, bf, _triple(padding, n), _triple(stride, n), [1] * n, 1)
        return y.to(dtype)

    return conv


OPS["conv3d"].register("mkldnn", _mkldnn_conv(3), priority=10, supports=_mkldnn_supports, differentiable=True)
OPS["conv2d"].register("mkldnn", _mkldnn_conv(2), priority=10, supports=_mkldnn_supports, differentiable=True)
