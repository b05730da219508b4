"""Parameter holders with the published names; the math lives in `liveavatar_rt.ops`.

Modules keep one shared `OpTable` (`self.ops`); `ops.dtype` is the compute dtype (bf16 for the
published path, fp32 for the high-precision reference).
"""
from __future__ import annotations

import torch
from torch import nn


class Linear(nn.Linear):
    """nn.Linear whose forward runs `ops.linear` in a given dtype (compute dtype by default)."""

    def __init__(self, ops, in_features: int, out_features: int, bias: bool = True):
        super().__init__(in_features, out_features, bias=bias, device="meta")
        self.ops = ops

    def forward(self, x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        return self.ops.linear(x, self.weight, self.bias, dtype or self.ops.dtype)


class RMSNorm(nn.Module):
    """WanRMSNorm over the whole feature dim (key: `<name>.weight`)."""

    def __init__(self, ops, dim: int, eps: float):
        super().__init__()
        self.ops, self.eps = ops, eps
        self.weight = nn.Parameter(torch.empty(dim, device="meta"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ops.rms_norm(x, self.weight, self.eps)


class AffineLayerNorm(nn.Module):
    """LayerNorm with weight and bias (keys `.weight`, `.bias`); output fp32."""

    def __init__(self, ops, dim: int, eps: float):
        super().__init__()
        self.ops, self.eps = ops, eps
        self.weight = nn.Parameter(torch.empty(dim, device="meta"))
        self.bias = nn.Parameter(torch.empty(dim, device="meta"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ops.layer_norm(x, self.weight, self.bias, self.eps)


class PatchConv(nn.Module):
    """Conv3d with kernel == stride (keys `.weight` [D, C, pf, ph, pw], `.bias`), as a matmul."""

    def __init__(self, ops, in_ch: int, out_ch: int, patch: tuple[int, int, int]):
        super().__init__()
        self.ops = ops
        self.weight = nn.Parameter(torch.empty(out_ch, in_ch, *patch, device="meta"))
        self.bias = nn.Parameter(torch.empty(out_ch, device="meta"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, C, F, H, W] -> tokens [B, F/pf * H/ph * W/pw, D] in the compute dtype."""
        from ..ops import patch_conv

        y = patch_conv(x, self.weight, self.bias, self.ops.dtype, self.ops)
        return y.flatten(2).transpose(1, 2)
