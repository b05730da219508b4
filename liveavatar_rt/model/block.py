"""One transformer block of CausalWanModel_S2V, with the published precision rules.

    x --LN(no affine), round--> modulate(shift1, scale1) --> self-attn --gate1--> + (fp32)
      --round, LN(affine)--> text cross-attn --> + (fp32)
      --LN(no affine)--> modulate(shift2, scale2) --> FFN(GELU tanh) --gate2--> + (fp32) --> round
"""
from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from .attention import AttendFn, CrossAttention, SelfAttention
from .layers import AffineLayerNorm, Linear


class FFN(nn.Sequential):
    """Keys ffn.0 (Linear dim->ffn), ffn.2 (Linear ffn->dim); GELU(tanh) in the compute dtype
    (ops.gelu_tanh; the nn.GELU entry only keeps the published key numbering)."""

    def __init__(self, ops, dim: int, ffn_dim: int):
        super().__init__(Linear(ops, dim, ffn_dim), nn.GELU(approximate="tanh"), Linear(ops, ffn_dim, dim))
        self.ops = ops

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self[2](self.ops.gelu_tanh(self[0](x)))


class Block(nn.Module):
    def __init__(self, ops, cfg: ModelConfig):
        super().__init__()
        self.ops, self.eps = ops, cfg.eps
        self.self_attn = SelfAttention(ops, cfg.dim, cfg.num_heads, cfg.eps)
        self.norm3 = AffineLayerNorm(ops, cfg.dim, cfg.eps)
        self.cross_attn = CrossAttention(ops, cfg.dim, cfg.num_heads, cfg.eps)
        self.ffn = FFN(ops, cfg.dim, cfg.ffn_dim)
        self.modulation = nn.Parameter(torch.empty(1, 6, cfg.dim, device="meta"))

    def norm1(self, x: torch.Tensor) -> torch.Tensor:
        """LayerNorm (no affine) computed in fp32 and rounded to x's dtype (published type_as(x)),
        before the fp32 modulation."""
        return self.ops.layer_norm(x, None, None, self.eps).to(x.dtype)

    def forward(self, x: torch.Tensor, e: torch.Tensor, text_kv, attend: AttendFn) -> torch.Tensor:
        """x: [B, L, C] compute dtype, L = F * tokens_per_frame.
        e: fp32 [B, F, 6, C], the time projection per frame (the block adds its modulation).
        text_kv: the cross-attention's `project_kv(text)`; attend: see SelfAttention.
        Returns [B, L, C] in the compute dtype."""
        ops, dt = self.ops, self.ops.dtype
        B, L, C = x.shape
        Fr = e.shape[1]
        m = self.modulation.float().unsqueeze(0) + e  # [B, F, 6, C] fp32
        shift1, scale1, gate1, shift2, scale2, gate2 = m.unsqueeze(3).unbind(2)  # each [B, F, 1, C]

        def per_frame(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(B, Fr, L // Fr, C)

        h = ops.modulate(per_frame(self.norm1(x)), shift1, scale1, dt).reshape(B, L, C)
        y = self.self_attn(h, attend)
        xf = ops.gated_residual(per_frame(x), per_frame(y), gate1).reshape(B, L, C)  # fp32 residual

        # hard-coded cast of the residual to the compute dtype before norm3
        h = self.norm3(xf.to(dt)).to(dt)
        xf = xf + self.cross_attn(h, text_kv)  # bf16 output promoted exactly in the add: no fp32 copy

        h = ops.modulate(per_frame(ops.layer_norm(xf, None, None, self.eps)), shift2, scale2, dt)
        y = self.ffn(h.reshape(B, L, C))
        xf = ops.gated_residual(per_frame(xf), per_frame(y), gate2).reshape(B, L, C)
        return xf.to(dt)
