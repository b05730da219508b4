"""Self- and cross-attention modules (published keys q, k, v, o, norm_q, norm_k)."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .layers import Linear, RMSNorm

AttendFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class QKVAttention(nn.Module):
    def __init__(self, ops, dim: int, num_heads: int, eps: float):
        super().__init__()
        self.ops, self.num_heads, self.head_dim = ops, num_heads, dim // num_heads
        self.q, self.k, self.v, self.o = (Linear(ops, dim, dim) for _ in range(4))
        self.norm_q = RMSNorm(ops, dim, eps)
        self.norm_k = RMSNorm(ops, dim, eps)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.num_heads, self.head_dim))

    def project_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """context: [B, Lk, C] -> k (RMS-normed), v: [B, Lk, H, D] in the compute dtype."""
        k = self._heads(self.norm_k(self.k(context)))
        v = self._heads(self.v(context))
        return k, v


class SelfAttention(QKVAttention):
    def forward(self, x: torch.Tensor, attend: AttendFn) -> torch.Tensor:
        """x: [B, L, C] -> [B, L, C]. `attend(q, k, v)` (all [B, L, H, D], q/k RMS-normed, not
        yet rotated) applies RoPE, reads/writes the caches and returns [B, L, H, D]."""
        q = self._heads(self.norm_q(self.q(x)))
        k, v = self.project_kv(x)
        return self.o(attend(q, k, v).flatten(2))


class CrossAttention(QKVAttention):
    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """x: [B, L, C] (any float dtype; rounded to the compute dtype by the q projection);
        kv: `project_kv(context)`, computed once per session for the text. -> [B, L, C]."""
        q = self._heads(self.norm_q(self.q(x)))
        return self.o(self.ops.attention(q, *kv).flatten(2))
