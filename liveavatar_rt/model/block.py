"""One transformer block of CausalWanModel_S2V, with the published precision rules.

    x --LN(no affine), round--> modulate(shift1, scale1) --> self-attn --gate1--> + (fp32)
      --round, LN(affine)--> text cross-attn --> + (fp32)
      --LN(no affine)--> modulate(shift2, scale2) --> FFN(GELU tanh) --gate2--> + (fp32) --> round
(the residual + norm + modulate chains: ops/block_norms.py's ln_modulate and residual_norm)
"""
from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from .attention import AttendFn, CrossAttention, SelfAttention
from .layers import AffineLayerNorm, Linear


# On CPU the FFN runs in chunks of this many token rows: its [rows, ffn_dim] intermediate then
# stays in a core's L2 (384 x 1536 bf16 = 1.1 MB at the medium preset) between the first GEMM,
# the GELU and the second GEMM, instead of a round trip through memory (the pipelined
# schedule's 4 x 192 rows: -13 % FFN time measured on this machine). Rows are independent: the
# values are those of the whole batch up to the GEMMs' accumulation order.
CPU_FFN_ROWS = 384


class FFN(nn.Sequential):
    """Keys ffn.0 (Linear dim->ffn), ffn.2 (Linear ffn->dim); GELU(tanh) in the compute dtype
    (ops.gelu_tanh; the nn.GELU entry only keeps the published key numbering)."""

    def __init__(self, ops, dim: int, ffn_dim: int):
        super().__init__(Linear(ops, dim, ffn_dim), nn.GELU(approximate="tanh"), Linear(ops, ffn_dim, dim))
        self.ops = ops

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, L, dim] -> [B, L, dim]."""
        B, L, C = x.shape
        if x.device.type != "cpu" or B * L <= CPU_FFN_ROWS or torch.is_grad_enabled():
            return self[2](self.ops.gelu_tanh(self[0](x)))
        rows = x.reshape(B * L, C)
        return torch.cat([self[2](self.ops.gelu_tanh(self[0](rows[i:i + CPU_FFN_ROWS])))
                          for i in range(0, B * L, CPU_FFN_ROWS)]).reshape(B, L, -1)


class Block(nn.Module):
    def __init__(self, ops, cfg: ModelConfig):
        super().__init__()
        self.ops, self.eps = ops, cfg.eps
        self.self_attn = SelfAttention(ops, cfg.dim, cfg.num_heads, cfg.eps)
        self.norm3 = AffineLayerNorm(ops, cfg.dim, cfg.eps)
        self.cross_attn = CrossAttention(ops, cfg.dim, cfg.num_heads, cfg.eps)
        self.ffn = FFN(ops, cfg.dim, cfg.ffn_dim)
        self.modulation = nn.Parameter(torch.empty(1, 6, cfg.dim, device="meta"))

    def forward(self, x: torch.Tensor, e: torch.Tensor, text_kv, attend: AttendFn) -> torch.Tensor:
        """x: [B, L, C] compute dtype, L = F * tokens_per_frame.
        e: fp32 [B, F, 6, C], the time projection per frame (the block adds its modulation).
        text_kv: the cross-attention's `project_kv(text)`; attend: see SelfAttention.
        Returns [B, L, C] in the compute dtype. The norm chains are ops/block_norms.py's two
        ops (published rules there: norm1 rounds to x's dtype before the fp32 modulation; norm3
        normalises the residual rounded to the compute dtype)."""
        ops, dt = self.ops, self.ops.dtype
        B, L, C = x.shape
        Fr = e.shape[1]
        m = self.modulation.float().unsqueeze(0) + e  # [B, F, 6, C] fp32
        shift1, scale1, gate1, shift2, scale2, gate2 = m.unsqueeze(3).unbind(2)  # each [B, F, 1, C]

        h = ops.ln_modulate(x, shift1, scale1, self.eps, dt)
        y = self.self_attn(h, attend)
        n3 = self.norm3
        xf, h = ops.residual_norm(x, y, gate1, n3.weight, n3.bias, None, None, n3.eps, True, dt)  # xf fp32
        # the cross-attention output (compute dtype) is added to the fp32 residual by promotion
        xf, h = ops.residual_norm(xf, self.cross_attn(h, text_kv), None, None, None, shift2, scale2, self.eps, False, dt)
        y = self.ffn(h)
        xf = ops.gated_residual(xf.reshape(B, Fr, L // Fr, C), y.reshape(B, Fr, L // Fr, C), gate2)
        return xf.reshape(B, L, C).to(dt)
