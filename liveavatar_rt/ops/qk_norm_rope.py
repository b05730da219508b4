"""Self-attention's q/k epilogue in one op: RMSNorm over the full width, then RoPE per head.

The model computes norm_q(q(x)), norm_k(k(x)) and then rotates both (the cache's attend);
unfused that is 4 passes plus the float64 rotation temporaries of rope_apply. The conditioning
cache stores K after the norm but *before* RoPE, so the un-rotated normed keys are an output
too. `k_rot_out` lets a provider write the rotated keys straight into a ring-cache slot view.
"""
from __future__ import annotations

from typing import Optional

import torch

from .norm import rms_norm
from .registry import define
from .rope import rope_apply


@define("qk_norm_rope")
def qk_norm_rope(q: torch.Tensor, k: torch.Tensor, wq: torch.Tensor, wk: torch.Tensor, eps: float,
                 cos: torch.Tensor, sin: torch.Tensor, num_heads: int,
                 k_rot_out: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k: [B, L, C]; wq, wk: [C]; cos, sin: [L, D/2] fp32 with D = C / num_heads.

    -> (q_rot, k_rot, k_normed), each [B, L, H, D] in q's / k's dtype:
    k_normed = rms_norm(k, wk, eps) split into heads (ops.norm.rms_norm: the statistic over all
    C, not per head); q_rot, k_rot = rope_apply of the normed q, k (ops.rope.rope_apply).
    k_rot_out: optional [B, L, H, D] view (e.g. `ring.k[layer, :, slot:slot + L]`) that receives
    k_rot; it is then returned as k_rot.
    """
    C = q.shape[-1]
    heads = (num_heads, C // num_heads)
    q_n = rms_norm(q, wq, eps).unflatten(-1, heads)
    k_n = rms_norm(k, wk, eps).unflatten(-1, heads)
    q_rot, k_rot = rope_apply(q_n, cos, sin), rope_apply(k_n, cos, sin)
    if k_rot_out is not None:
        k_rot = k_rot_out.copy_(k_rot)
    return q_rot, k_rot, k_n
