"""Self- and cross-attention modules (published keys q, k, v, o, norm_q, norm_k).

Self-attention hands its q/k/v projections to an `attend` supplied by the caches. Two forms:
- a plain `AttendFn(q, k, v)` gets q and k already RMS-normed (norm_q / norm_k), not rotated;
- an attend with a `raw(q, k, v, wq, wk, eps, num_heads)` method (`FusedAttend`, what
  `liveavatar_rt.cache` returns) gets the projections *before* the norms, so it can run the
  norms, RoPE and the cache write as one op (`ops.qk_norm_rope`). With reference ops both
  forms compute the same values (the reference qk_norm_rope is exactly norm then RoPE).
"""
from __future__ import annotations

from typing import Callable, Protocol

import torch
from torch import nn

from .layers import Linear, RMSNorm

AttendFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class FusedAttend(Protocol):
    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q, k (normed, not rotated), v: [B, L, H, D] -> [B, L, H, D]."""

    def raw(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, wq: torch.Tensor, wk: torch.Tensor,
            eps: float, num_heads: int) -> torch.Tensor:
        """q, k: [B, L, C] projections before norm_q / norm_k (weights wq, wk: [C]);
        v: [B, L, H, D] -> [B, L, H, D]."""


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


@torch.compiler.disable
def _attend_raw(attend: FusedAttend, q, k, v, wq, wk, eps: float, num_heads: int) -> torch.Tensor:
    """`attend.raw(...)`, kept out of torch.compile graphs (Pipeline compile=True): the cache
    writes go to slots that change every block, and the fused attention ops are opaque anyway,
    so the graph breaks here instead of recompiling per slot."""
    return attend.raw(q, k, v, wq, wk, eps, num_heads)


class SelfAttention(QKVAttention):
    def forward(self, x: torch.Tensor, attend: AttendFn | FusedAttend) -> torch.Tensor:
        """x: [B, L, C] -> [B, L, C]. `attend` applies RoPE, reads/writes the caches and returns
        [B, L, H, D]; see the module docstring for its two forms."""
        q, k, v = self.q(x), self.k(x), self._heads(self.v(x))
        if getattr(attend, "raw", None) is not None:
            out = _attend_raw(attend, q, k, v, self.norm_q.weight, self.norm_k.weight, self.norm_q.eps, self.num_heads)
        else:
            out = attend(self._heads(self.norm_q(q)), self._heads(self.norm_k(k)), v)
        return self.o(out.flatten(2))


class CrossAttention(QKVAttention):
    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """x: [B, L, C] (any float dtype; rounded to the compute dtype by the q projection);
        kv: `project_kv(context)`, computed once per session for the text: [B or 1, Lk, H, D]
        (one text for a batch of rows, e.g. the pipelined schedule's blocks). -> [B, L, C]."""
        q = self._heads(self.norm_q(self.q(x)))
        k, v = kv
        if k.shape[0] == 1 and q.shape[0] > 1:  # a view: every row reads the same keys
            k, v = k.expand(q.shape[0], *k.shape[1:]), v.expand(q.shape[0], *v.shape[1:])
        return self.o(self.ops.attention(q, k, v).flatten(2))
