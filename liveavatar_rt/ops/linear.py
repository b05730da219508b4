"""Linear layers with the published (CUDA autocast) precision rule.

Reference: inputs and weights rounded to the compute dtype, products accumulated in fp32 with
the bias, one rounding of the result to the compute dtype (what cuBLAS does under autocast).
Provider `native`: torch's own low-precision GEMM (oneDNN/AMX on CPU, cuBLAS on GPU), same rule
up to accumulation order, several times faster on CPU in bf16.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .registry import OPS, define


@define("linear")
def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """x: [..., in], weight: [out, in], bias: [out] -> [..., out] in `dtype`."""
    if dtype == torch.float32:
        return F.linear(x.float(), weight.float(), None if bias is None else bias.float())
    b = None if bias is None else bias.to(dtype).float()
    return F.linear(x.to(dtype).float(), weight.to(dtype).float(), b).to(dtype)


def _cast(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # A no-op `.to` still costs a dispatcher round trip (~1 us); a block step makes ~140 here.
    return t if t.dtype == dtype else t.to(dtype)


def _native_linear(x, weight, bias, dtype):
    return F.linear(_cast(x, dtype), _cast(weight, dtype), None if bias is None else _cast(bias, dtype))


def _native_supports(device: torch.device, dtype: torch.dtype):
    if dtype not in (torch.bfloat16, torch.float16):
        return f"no gain over the reference for {dtype} (the reference is already a native fp32 GEMM)"
    if device.type == "cpu" and dtype == torch.float16:
        return "fp16 GEMM is slow on CPU; use bf16"
    return None


OPS["linear"].register("native", _native_linear, priority=5, supports=_native_supports, differentiable=True)


def patch_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype, ops) -> torch.Tensor:
    """Conv3d whose kernel equals its stride, as reshape + matmul.

    x: [B, C, F, H, W]; weight: [D, C, pf, ph, pw] -> [B, D, F/pf, H/ph, W/pw].
    Why not conv3d: oneDNN's bf16 conv3d is wrong on CPU when kernel == stride (SPEC 4b), and a
    matmul is also the fastest way to patchify.
    """
    B, C, Fr, H, W = x.shape
    D, _, pf, ph, pw = weight.shape
    if Fr % pf or H % ph or W % pw:
        raise ValueError(f"patch_conv: input {tuple(x.shape)} is not divisible by the patch {(pf, ph, pw)}")
    f, h, w = Fr // pf, H // ph, W // pw
    cols = x.reshape(B, C, f, pf, h, ph, w, pw).permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(B, f * h * w, C * pf * ph * pw)
    y = ops.linear(cols, weight.reshape(D, -1), bias, dtype)
    return y.reshape(B, f, h, w, D).permute(0, 4, 1, 2, 3)
