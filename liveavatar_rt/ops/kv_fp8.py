"""FP8 (E4M3) KV cache: per-token, per-head scales, and rolling attention that reads it.

Beyond the published system (it keeps K/V in bf16). A stored K or V row of one token and one
head ([D] values) is kept as E4M3 codes plus one fp32 scale:

    scale = max(max|x|, 1e-12) / 448          (fp32; 448 = E4M3's largest value)
    x8    = e4m3(clamp(fp32(x) / scale, -448, 448))
    x~    = dtype(fp32(x8) * scale)           (one fp32 product, one rounding to the compute dtype)

Per token (not per tensor or per head) because a ring slot is written once, by one block: a
token's scale never changes after its write, so nothing already stored is re-quantized, and a
loud token cannot crush the resolution of the others. Cost: one fp32 per D bytes (3 % at D = 128).

`rolling_attention_fp8` is defined as `rolling_attention` over the dequantized rows (x~), so a
provider that dequantizes inside its key/value loads, with the same single rounding, computes the
very keys and values the bf16 op would be handed.
"""
from __future__ import annotations

import torch

from .registry import define
from .rolling_attention import rolling_attention

E4M3 = torch.float8_e4m3fn
E4M3_MAX = float(torch.finfo(E4M3).max)  # 448.0


def quantize_kv(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x: [..., D] (any float dtype) -> (x8 [..., D] E4M3, scale [...] fp32), per row of D."""
    xf = x.float()
    scale = xf.abs().amax(dim=-1).clamp(min=1e-12) / E4M3_MAX
    x8 = (xf / scale.unsqueeze(-1)).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3)
    return x8, scale


def dequantize_kv(x8: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """x8: [..., D] E4M3, scale: [...] fp32 -> [..., D] in `dtype` (fp32 product, one rounding)."""
    return (x8.float() * scale.unsqueeze(-1)).to(dtype)


@define("rolling_attention_fp8")
def rolling_attention_fp8(q: torch.Tensor, ring_k: torch.Tensor, ring_v: torch.Tensor, ring_ks: torch.Tensor,
                          ring_vs: torch.Tensor, valid: int, cond_k: torch.Tensor, cond_v: torch.Tensor,
                          cond_ks: torch.Tensor, cond_vs: torch.Tensor, cond_cos: torch.Tensor,
                          cond_sin: torch.Tensor) -> torch.Tensor:
    """`rolling_attention` with K/V stored in E4M3.

    q: [B, Lq, H, D] (rotated, fp32 or bf16); ring_k, ring_v: [B, cap, H, D] E4M3 (ring_k
    rotated), scales ring_ks, ring_vs: [B, cap, H] fp32, first `valid` tokens used; cond_k,
    cond_v: [B, Lc, H, D] E4M3 (cond_k NOT rotated), scales cond_ks, cond_vs: [B, Lc, H] fp32;
    cond_cos, cond_sin: [Lc, D/2] fp32. -> [B, Lq, H, D] in q's dtype. Every row is dequantized
    to q's dtype (`dequantize_kv`), then exactly `rolling_attention`.
    """
    dt = q.dtype
    return rolling_attention(q, dequantize_kv(ring_k[:, :valid], ring_ks[:, :valid], dt),
                             dequantize_kv(ring_v[:, :valid], ring_vs[:, :valid], dt), valid,
                             dequantize_kv(cond_k, cond_ks, dt), dequantize_kv(cond_v, cond_vs, dt),
                             cond_cos, cond_sin)
