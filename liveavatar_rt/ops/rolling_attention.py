"""Attention of one streaming block over [its step's ring cache ; the conditioning keys].

What `RingCache.attend` computes per layer once the block's rotated K/V are in the ring: the
ring holds keys already rotated at their own positions, the conditioning cache holds keys
*before* RoPE (they are re-rotated at the current sink position every block), so the op takes
the conditioning keys un-rotated together with their cos/sin, and a fused provider rotates them
on the fly instead of writing a rotated copy and a concatenation per layer per block.
"""
from __future__ import annotations

import torch

from .attention import attention
from .registry import define
from .rope import rope_apply


@define("rolling_attention")
def rolling_attention(q: torch.Tensor, ring_k: torch.Tensor, ring_v: torch.Tensor, valid: int,
                      cond_k: torch.Tensor, cond_v: torch.Tensor, cond_cos: torch.Tensor,
                      cond_sin: torch.Tensor) -> torch.Tensor:
    """softmax(q K^T / sqrt(D)) V with K = [ring_k[:, :valid] ; rope(cond_k)], V = [ring_v[:, :valid] ; cond_v].

    q: [B, Lq, H, D] (already rotated); ring_k, ring_v: [B, cap, H, D] (ring_k rotated), of
    which the first `valid` tokens are used; cond_k, cond_v: [B, Lc, H, D] (cond_k NOT rotated);
    cond_cos, cond_sin: [Lc, D/2] fp32 (fp32-exact RoPE tables, see model/rope.py; rope_apply
    promotes them to float64, so fp32 loses nothing). -> [B, Lq, H, D] in q's dtype.
    Exact softmax, fp32 softmax and accumulation (ops.attention), no mask.
    """
    keys = torch.cat([ring_k[:, :valid], rope_apply(cond_k, cond_cos, cond_sin)], dim=1)
    vals = torch.cat([ring_v[:, :valid], cond_v], dim=1)
    return attention(q, keys, vals)
