"""adaLN modulation and gated residual, in fp32 as the published block computes them."""
from __future__ import annotations

import torch

from .registry import define


@define("modulate")
def modulate(x_norm: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """out = dtype(fp32(x_norm) * (1 + scale) + shift).

    x_norm: [B, L, C] (already rounded as the caller's rule says); shift, scale: fp32,
    broadcastable to [B, L, C] (per token or per frame).
    """
    return (x_norm.float() * (1 + scale) + shift).to(out_dtype)


@define("gated_residual")
def gated_residual(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """fp32 residual update: x + y * gate, with y: [B, L, C] in the compute dtype, gate fp32."""
    return x.float() + y.float() * gate
