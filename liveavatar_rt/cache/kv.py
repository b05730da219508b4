"""Timestep-forcing KV caches.

- `CondCache`: per layer, the conditioning K (after norm_k, *before* RoPE) and V written by the
  t = 0 prefill. One per session, shared by every step cache: the published code recomputes it
  once per step cache with identical results.
- `RingCache`: per denoising step, per layer, a preallocated ring of `capacity` tokens
  (12 latent frames by default). The block being denoised writes its rotated K and its V into
  the ring, then attends over [ring contents ; conditioning keys rotated at the current sink
  position]. Nothing grows with stream length.

Both hand the model attends of the two forms model/attention.py describes: called with normed
q/k, or through `raw` with the projections before the norms, where one `ops.qk_norm_rope` call
normalises q and k, rotates them and writes the rotated keys straight into the ring slot.

`kv_dtype=torch.float8_e4m3fn` (the pipeline's `kv_cache_dtype="fp8"`) stores every K/V row of
both caches as E4M3 plus one fp32 scale per token and head (ops/kv_fp8.py), quantized when it is
written, dequantized inside `ops.rolling_attention_fp8`. The queries, the prefill's own
attention and everything else stay in the compute dtype.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..ops.kv_fp8 import E4M3, dequantize_kv, quantize_kv


def _fp32_tables(rope: tuple[torch.Tensor, torch.Tensor], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE tables as fp32 [L, D/2] on `device`, the form the fused providers take. The tables
    hold fp32-rounded values (model/rope.py), so this is exact, and the references, which
    promote them to float64, compute the same values from either form. (model/rope.py builds
    them on the host; on CPU the move is a no-op.)"""
    return tuple(t.to(device=device, dtype=torch.float32) for t in rope)


class _PrefillAttend:
    """Prefill attend of one layer: store the normed K and V, full attention among cond tokens."""

    def __init__(self, cache: "CondCache", layer: int, rope: tuple[torch.Tensor, torch.Tensor], ops):
        self.cache, self.layer, self.rope, self.ops = cache, layer, rope, ops

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        ops, (cos, sin) = self.ops, (t.to(q.device) for t in self.rope)
        self.cache.store(self.layer, k, v)
        return ops.attention(ops.rope_apply(q, cos, sin), ops.rope_apply(k, cos, sin), v)

    def raw(self, q, k, v, wq, wk, eps: float, num_heads: int) -> torch.Tensor:
        q_rot, k_rot, k_normed = self.ops.qk_norm_rope(q, k, wq, wk, eps, *_fp32_tables(self.rope, q.device),
                                                       num_heads)
        self.cache.store(self.layer, k_normed, v)
        return self.ops.attention(q_rot, k_rot, v)


def _same_layout(a: torch.Tensor | None, b: torch.Tensor) -> bool:
    return a is not None and a.shape == b.shape and a.dtype == b.dtype and a.device == b.device


def _stored(k: torch.Tensor, v: torch.Tensor, fp8: bool) -> tuple[torch.Tensor, ...]:
    """K/V [B, n, H, D] in the form both caches hold them: (k, v), or for fp8 (k8, v8, k scales,
    v scales), the order of `RingCache.layer` / `CondCache.tensors`."""
    if not fp8:
        return k, v
    (k8, ks), (v8, vs) = quantize_kv(k), quantize_kv(v)
    return k8, v8, ks, vs


def check_kv_dtype(kv_dtype: torch.dtype | None) -> bool:
    """True for an FP8 cache (E4M3), False for None (K/V kept in the compute dtype)."""
    if kv_dtype not in (None, E4M3):
        raise ValueError(f"kv cache dtype {kv_dtype}: use None (the compute dtype) or {E4M3} (fp8)")
    return kv_dtype is not None


class CondCache:
    def __init__(self, num_layers: int, kv_dtype: torch.dtype | None = None):
        self.fp8 = check_kv_dtype(kv_dtype)
        self.k: list[torch.Tensor | None] = [None] * num_layers
        self.v: list[torch.Tensor | None] = [None] * num_layers
        # fp8: per-token, per-head fp32 scales [B, Lc, H] of k / v
        self.ks: list[torch.Tensor | None] = [None] * num_layers
        self.vs: list[torch.Tensor | None] = [None] * num_layers

    @property
    def ready(self) -> bool:
        return all(k is not None for k in self.k)

    def alias(self) -> "CondCache":
        """A cache holding these very tensors (its lists are its own)."""
        c = CondCache(len(self.k), E4M3 if self.fp8 else None)
        c.k, c.v, c.ks, c.vs = list(self.k), list(self.v), list(self.ks), list(self.vs)
        return c

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor held (K, V and, for fp8, their scales)."""
        return [t for ts in (self.k, self.v, self.ks, self.vs) for t in ts if t is not None]

    def store(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Keep layer `layer`'s K/V ([B, Lc, H, D]; quantized first for fp8). At inference (no
        autograd), a re-prefill of the same shape (the sink replacement) copies into the tensors
        already there: a captured CUDA graph reads them by address (engine/graphs.py)."""
        lists = (self.k, self.v, self.ks, self.vs) if self.fp8 else (self.k, self.v)
        new = _stored(k, v, self.fp8)
        if not torch.is_grad_enabled() and all(_same_layout(li[layer], t) for li, t in zip(lists, new)):
            for li, t in zip(lists, new):
                li[layer].copy_(t)
        else:
            for li, t in zip(lists, new):
                li[layer] = t

    def prefill_attend(self, layer: int, cos: torch.Tensor, sin: torch.Tensor, ops) -> _PrefillAttend:
        """Attend for the prefill pass (cos/sin: [Lc, D/2] at the cond tokens' positions): store
        K/V, then full attention among cond tokens."""
        return _PrefillAttend(self, layer, (cos, sin), ops)


@dataclass
class BlockPlan:
    """Everything a block's ring attend depends on, as tensors (+ the attended length): the one
    form the eager path and the CUDA-graph path (engine/graphs.py) share.

    slots: int64 [n], the ring slots the block's K/V are written to; valid: ring tokens attended
    after the write (fixed in a captured graph); q_cos/q_sin fp32 [n, D/2]: the RoPE tables of
    the block's positions; c_cos/c_sin fp32 [Lc, D/2]: of the sink position (the conditioning
    keys). slot: the first slot as a Python int when the caller has one (eager): the fused
    provider then rotates the keys straight into the ring, saving a copy; None in a graph's
    static plan, whose slots change per replay as tensor contents."""

    slots: torch.Tensor
    valid: int
    q_cos: torch.Tensor
    q_sin: torch.Tensor
    c_cos: torch.Tensor
    c_sin: torch.Tensor
    slot: int | None = None

    @classmethod
    def empty_like(cls, plan: "BlockPlan") -> "BlockPlan":
        """Static buffers of `plan`'s shapes (slot None: the write goes through `slots`)."""
        return cls(*(torch.empty_like(t) for t in (plan.slots,)), plan.valid,
                   *(torch.empty_like(t) for t in (plan.q_cos, plan.q_sin, plan.c_cos, plan.c_sin)))

    def copy_(self, plan: "BlockPlan") -> None:
        """Take `plan`'s values into these buffers (same shapes and `valid`)."""
        if plan.valid != self.valid:
            raise ValueError(f"plan attends {plan.valid} ring tokens, these buffers {self.valid}")
        for dst, src in zip((self.slots, self.q_cos, self.q_sin, self.c_cos, self.c_sin),
                            (plan.slots, plan.q_cos, plan.q_sin, plan.c_cos, plan.c_sin)):
            dst.copy_(src)


class _RingAttend:
    """Attend of one layer for one block; see RingCache.attend."""

    def __init__(self, ring: "RingCache", layer: int, plan: BlockPlan, cond: CondCache, ops):
        self.ring, self.layer, self.plan, self.cond, self.ops = ring, layer, plan, cond, ops

    def _attend(self, q_rot: torch.Tensor) -> torch.Tensor:
        ring, i, p, c = self.ring, self.layer, self.plan, self.cond
        if ring.fp8:
            return self.ops.rolling_attention_fp8(q_rot, *ring.layer(i), p.valid, c.k[i], c.v[i], c.ks[i], c.vs[i],
                                                  p.c_cos, p.c_sin)
        return self.ops.rolling_attention(q_rot, *ring.layer(i), p.valid, c.k[i], c.v[i], p.c_cos, p.c_sin)

    def _write(self, k_rot: torch.Tensor | None, v: torch.Tensor) -> None:
        """k_rot (None: already written by qk_norm_rope), v: [B, n, H, D] into the plan's slots."""
        dst = self.ring.layer(self.layer)
        src = _stored(k_rot, v, self.ring.fp8)  # k_rot is never None for fp8 (see `raw`)
        p, n = self.plan, v.shape[1]
        for d, t in zip(dst, src):
            if t is None:
                continue
            if p.slot is not None:
                d[:, p.slot:p.slot + n] = t
            elif d.dtype == E4M3:  # index_copy_ has no fp8 kernel: move the codes as bytes
                d.view(torch.uint8).index_copy_(1, p.slots, t.view(torch.uint8))
            else:
                d.index_copy_(1, p.slots, t)

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        ops, p = self.ops, self.plan
        self._write(ops.rope_apply(k, p.q_cos, p.q_sin), v)
        return self._attend(ops.rope_apply(q, p.q_cos, p.q_sin))

    def raw(self, q, k, v, wq, wk, eps: float, num_heads: int) -> torch.Tensor:
        p, n = self.plan, q.shape[1]
        if p.slot is not None and not self.ring.fp8:  # rotate the keys straight into the ring slot
            ring_k = self.ring.layer(self.layer)[0]
            q_rot, _, _ = self.ops.qk_norm_rope(q, k, wq, wk, eps, p.q_cos, p.q_sin, num_heads,
                                                k_rot_out=ring_k[:, p.slot:p.slot + n])
            self._write(None, v)
        else:
            q_rot, k_rot, _ = self.ops.qk_norm_rope(q, k, wq, wk, eps, p.q_cos, p.q_sin, num_heads)
            self._write(k_rot, v)
        return self._attend(q_rot)


class RingCache:
    def __init__(self, num_layers: int, batch: int, capacity: int, heads: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str = "cpu", kv_dtype: torch.dtype | None = None):
        """dtype: the compute dtype; kv_dtype: None (K/V stored in dtype) or E4M3 (fp8: codes
        plus fp32 scales `ks`, `vs` [L, B, capacity, H])."""
        self.fp8 = check_kv_dtype(kv_dtype)
        shape = (num_layers, batch, capacity, heads, head_dim)
        self.dtype = dtype
        self.k = torch.zeros(shape, dtype=kv_dtype or dtype, device=device)
        self.v = torch.zeros(shape, dtype=kv_dtype or dtype, device=device)
        self.ks = torch.zeros(shape[:-1], dtype=torch.float32, device=device) if self.fp8 else None
        self.vs = torch.zeros(shape[:-1], dtype=torch.float32, device=device) if self.fp8 else None
        self.capacity = capacity
        # per-layer views [batch, capacity, heads, head_dim], made once (saves a select per use)
        self._layers = list(zip(*(t.unbind(0) for t in self.tensors())))

    def tensors(self) -> list[torch.Tensor]:
        """k, v and, for fp8, their scales ks, vs: the layout of `layer(i)`, with a layer dim."""
        return [self.k, self.v] + ([self.ks, self.vs] if self.fp8 else [])

    def window(self, start: int, length: int) -> tuple[int, int]:
        """(write slot, number of valid tokens after the write) for a block at token `start`."""
        if length > self.capacity or self.capacity % length:
            raise ValueError(f"block of {length} tokens does not tile a ring of {self.capacity}")
        slot = start % self.capacity
        return slot, (self.capacity if start >= self.capacity else start + length)

    def layer(self, i: int) -> tuple[torch.Tensor, ...]:
        """Layer i's (k, v) ring, [batch, capacity, heads, head_dim] views; fp8: (k, v, ks, vs)
        with the scales [batch, capacity, heads]. Under autograd, fresh views: writing into one
        of unbind's shared views is refused there."""
        return self._layers[i] if not torch.is_grad_enabled() else tuple(t[i] for t in self.tensors())

    def rotate(self, cos: torch.Tensor, sin: torch.Tensor, ops) -> None:
        """Re-rotate every stored key by one more RoPE angle (cos/sin: [1, head_dim/2], the same
        for all tokens): used to rebase time positions, R(p - P) = R(-P) R(p). fp8: the keys
        are dequantized, rotated in the compute dtype and quantized again (a rare event)."""
        L, B, N, H, D = self.k.shape
        cos, sin = cos.to(self.k.device), sin.to(self.k.device)
        keys = dequantize_kv(self.k, self.ks, self.dtype) if self.fp8 else self.k
        rot = ops.rope_apply(keys.reshape(L * B, N, H, D), cos.expand(N, -1), sin.expand(N, -1)).reshape(self.k.shape)
        if self.fp8:
            k8, ks = quantize_kv(rot)
            self.k.copy_(k8)
            self.ks.copy_(ks)
        else:
            self.k.copy_(rot)

    def plan(self, start: int, q_rope: tuple[torch.Tensor, torch.Tensor],
             cond_rope: tuple[torch.Tensor, torch.Tensor]) -> BlockPlan:
        """The plan of a block at token `start` of the stream (q_rope: [n, D/2] tables of its
        positions; cond_rope: [Lc, D/2] at the sink position)."""
        n = q_rope[0].shape[0]
        slot, valid = self.window(start, n)
        slots = torch.arange(slot, slot + n, device=self.k.device)
        dev = self.k.device
        return BlockPlan(slots, valid, *_fp32_tables(q_rope, dev), *_fp32_tables(cond_rope, dev), slot=slot)

    def attend(self, layer: int, plan: BlockPlan, cond: CondCache, ops) -> _RingAttend:
        """Attend for one block: q/k rotated at the block's positions, k/v written at the plan's
        slots, keys = [ring[:valid] ; RoPE(cond K) at the sink position].
        ops.rolling_attention: a fused provider rotates the cond keys on the fly, no concat;
        through `raw`, ops.qk_norm_rope writes the rotated keys into the ring slot."""
        return _RingAttend(self, layer, plan, cond, ops)
