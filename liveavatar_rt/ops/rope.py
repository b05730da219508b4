"""Rotary position embedding on interleaved pairs (Wan / Live Avatar layout)."""
from __future__ import annotations

import torch

from .registry import define


@define("rope_apply")
def rope_apply(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[..., 2i], x[..., 2i+1]) by the angle whose cos/sin are given.

    x: [B, L, H, D]; cos, sin: float64 [L, D/2] (already rounded as the published fp16 tables
    are). The product runs in float64 and the result is rounded to fp32 then x's dtype, as the
    published rope_apply does (complex128 multiply, `.float()`, `.type_as(v)`).
    """
    B, L, H, D = x.shape
    xd = x.to(torch.float64).reshape(B, L, H, D // 2, 2)
    a, b = xd[..., 0], xd[..., 1]
    c = cos.reshape(1, L, 1, D // 2)
    s = sin.reshape(1, L, 1, D // 2)
    out = torch.stack([a * c - b * s, a * s + b * c], dim=-1).reshape(B, L, H, D)
    return out.float().to(x.dtype)
