"""Normalisations. LayerNorm and the RMS statistic run in fp32 (CUDA autocast policy)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .registry import define


@define("layer_norm")
def layer_norm(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    """x: [..., C] -> fp32 [..., C]. Affine parameters, if any, are upcast to fp32."""
    w = None if weight is None else weight.float()
    b = None if bias is None else bias.float()
    return F.layer_norm(x.float(), (x.shape[-1],), w, b, eps)


@define("rms_norm")
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """WanRMSNorm: x: [..., C] -> [..., C] in x's dtype.

    The statistic is fp32; the normalised value is rounded to x's dtype *before* the weight
    multiply, which then runs in x's dtype (published order).
    """
    xf = x.float()
    y = (xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps)).to(x.dtype)
    return y * weight.to(x.dtype)
