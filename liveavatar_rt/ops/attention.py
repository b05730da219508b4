"""Exact softmax attention: bf16 (or fp32) q/k/v in, fp32 softmax and accumulation, output in q's dtype."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .registry import define


@define("attention")
def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q: [B, Lq, H, D], k, v: [B, Lk, H, D] -> [B, Lq, H, D]; scale 1/sqrt(D), no mask."""
    o = F.scaled_dot_product_attention(q.float().transpose(1, 2), k.float().transpose(1, 2), v.float().transpose(1, 2))
    return o.transpose(1, 2).to(q.dtype)
