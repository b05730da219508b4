"""Timestep-forcing KV caches.

- `CondCache`: per layer, the conditioning K (after norm_k, *before* RoPE) and V written by the
  t = 0 prefill. One per session, shared by every step cache: the published code recomputes it
  once per step cache with identical results.
- `RingCache`: per denoising step, per layer, a preallocated ring of `capacity` tokens
  (12 latent frames by default). The block being denoised writes its rotated K and its V into
  the ring, then attends over [ring contents ; conditioning keys rotated at the current sink
  position]. Nothing grows with stream length.
"""
from __future__ import annotations

import torch

from ..model.attention import AttendFn


class CondCache:
    def __init__(self, num_layers: int):
        self.k: list[torch.Tensor | None] = [None] * num_layers
        self.v: list[torch.Tensor | None] = [None] * num_layers

    @property
    def ready(self) -> bool:
        return all(k is not None for k in self.k)

    def prefill_attend(self, layer: int, cos: torch.Tensor, sin: torch.Tensor, ops) -> AttendFn:
        """Attend for the prefill pass: store K/V, then full attention among cond tokens."""

        def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            self.k[layer], self.v[layer] = k, v
            return ops.attention(ops.rope_apply(q, cos, sin), ops.rope_apply(k, cos, sin), v)

        return attend


class RingCache:
    def __init__(self, num_layers: int, batch: int, capacity: int, heads: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str = "cpu"):
        shape = (num_layers, batch, capacity, heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.capacity = capacity

    def window(self, start: int, length: int) -> tuple[int, int]:
        """(write slot, number of valid tokens after the write) for a block at token `start`."""
        if length > self.capacity or self.capacity % length:
            raise ValueError(f"block of {length} tokens does not tile a ring of {self.capacity}")
        slot = start % self.capacity
        return slot, (self.capacity if start >= self.capacity else start + length)

    def rotate(self, cos: torch.Tensor, sin: torch.Tensor, ops) -> None:
        """Re-rotate every stored key by one more RoPE angle (cos/sin: [1, head_dim/2], the same
        for all tokens): used to rebase time positions, R(p - P) = R(-P) R(p)."""
        L, B, N, H, D = self.k.shape
        flat = self.k.reshape(L * B, N, H, D)
        self.k.copy_(ops.rope_apply(flat, cos.expand(N, -1), sin.expand(N, -1)).reshape(self.k.shape))

    def attend(self, layer: int, start: int, q_rope: tuple[torch.Tensor, torch.Tensor], cond: CondCache,
               cond_rope: tuple[torch.Tensor, torch.Tensor], ops) -> AttendFn:
        """Attend for one block: q/k rotated at the block's positions, k/v written at `start`
        (token index in the stream), keys = [ring[:valid] ; RoPE(cond K) at the sink position]
        (ops.rolling_attention: a fused provider rotates the cond keys on the fly, no concat)."""
        # The tables hold fp32-rounded values (model/rope.py), so fp32 is exact and is the
        # form the fused providers take.
        cond_cos, cond_sin = (t.float() for t in cond_rope)

        def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            n = q.shape[1]
            slot, valid = self.window(start, n)
            self.k[layer, :, slot:slot + n] = ops.rope_apply(k, *q_rope)
            self.v[layer, :, slot:slot + n] = v
            return ops.rolling_attention(ops.rope_apply(q, *q_rope), self.k[layer], self.v[layer], valid,
                                         cond.k[layer], cond.v[layer], cond_cos, cond_sin)

        return attend
