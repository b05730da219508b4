"""umT5 encoder (the published text encoder, `models_t5_umt5-xxl-enc-bf16.pth`).

Published facts reproduced here (SPEC 3 "Text", 7):
- Encoder only: token embedding, N pre-norm blocks (T5 RMS norm -> self-attention -> residual,
  T5 RMS norm -> gated GELU(tanh) FFN -> residual), final T5 RMS norm; dropout 0 at inference.
- Attention has no 1/sqrt(d) scale; scores get an additive relative-position bias (bidirectional
  log buckets, max distance 128). umT5 has one bias table per layer (`shared_pos=False`).
  Padded keys get the dtype's most negative value in place of the bias.
- The published model runs with bf16 parameters and no autocast: linears and the two attention
  matmuls take bf16 inputs, accumulate in fp32 and round once to bf16; the RMS statistic and the
  softmax are fp32; residuals and elementwise math (GELU, gating, bias add) are rounded to bf16
  after every op. In fp16 a block's output is clamped to +-(max - 1000) when it holds an inf.
- Key names: `token_embedding.weight`, `blocks.N.norm{1,2}.weight`,
  `blocks.N.attn.{q,k,v,o}.weight`, `blocks.N.ffn.{gate.0,fc1,fc2}.weight`,
  `blocks.N.pos_embedding.embedding.weight` [buckets, heads], `norm.weight`.
- The pipeline keeps only each prompt's real tokens: `encode` returns [len_i, dim] tensors.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import OpTable
from .layers import Linear, RMSNorm


@dataclass(frozen=True)
class UMT5Config:
    vocab_size: int = 256384
    dim: int = 4096
    dim_attn: int = 4096
    dim_ffn: int = 10240
    num_heads: int = 64
    num_layers: int = 24
    num_buckets: int = 32
    max_dist: int = 128
    shared_pos: bool = False  # umT5: one relative-position table per layer
    eps: float = 1e-6
    text_len: int = 512

    def __post_init__(self) -> None:
        if self.dim_attn % self.num_heads:
            raise ValueError(f"dim_attn {self.dim_attn} is not divisible by num_heads {self.num_heads}")
        if self.num_buckets < 4 or self.num_buckets % 2:
            raise ValueError(f"num_buckets {self.num_buckets} must be even and >= 4 (bidirectional buckets)")

    @property
    def head_dim(self) -> int:
        return self.dim_attn // self.num_heads

    def replace(self, **kw) -> "UMT5Config":
        return dataclasses.replace(self, **kw)

    @classmethod
    def preset(cls, name: str) -> "UMT5Config":
        try:
            return UMT5_PRESETS[name]
        except KeyError:
            raise ValueError(f"unknown umT5 preset {name!r}; known presets: {sorted(UMT5_PRESETS)}") from None


UMT5_PRESETS: dict[str, UMT5Config] = {
    "umt5-xxl": UMT5Config(),
    "umt5-tiny": UMT5Config(vocab_size=300, dim=64, dim_attn=64, dim_ffn=96, num_heads=4, num_layers=2,
                            num_buckets=8, text_len=32),
}


def relative_buckets(lq: int, lk: int, num_buckets: int, max_dist: int, device=None) -> torch.Tensor:
    """Bidirectional T5 bucket of (key position - query position): int64 [lq, lk].

    Half the buckets per direction; in each half, distances < half/2 get their own bucket, larger
    ones share log-spaced buckets up to `max_dist`, beyond which they clamp to the last one.
    The float32 expression is evaluated in the published order so the boundaries agree exactly.
    """
    rel = torch.arange(lk, device=device)[None, :] - torch.arange(lq, device=device)[:, None]
    half = num_buckets // 2
    out = (rel > 0).long() * half
    dist = rel.abs()
    exact = half // 2
    # clamp(min=1) only avoids log(0) at positions that `where` discards anyway
    large = exact + (torch.log(dist.clamp(min=1).float() / exact) / math.log(max_dist / exact)
                     * (half - exact)).long()
    large = large.clamp(max=half - 1)
    return out + torch.where(dist < exact, dist, large)


def _fp16_clamp(x: torch.Tensor) -> torch.Tensor:
    """Published overflow guard: only fp16, only when the tensor holds an inf."""
    if x.dtype == torch.float16 and torch.isinf(x).any():
        c = torch.finfo(torch.float16).max - 1000
        x = x.clamp(-c, c)
    return x


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), every op rounded to x's dtype (published
    elementwise GELU on bf16 tensors, not a fused kernel)."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def biased_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Unscaled softmax attention with an additive bias, in q's dtype.

    q, k, v: [B, L, H, D]; bias: [B|1, H, Lq, Lk] (already holding the mask) -> [B, Lq, H, D].
    Scores and the output: fp32 products of the (low-precision) inputs, one rounding to the
    dtype; bias added in the dtype; softmax in fp32, probabilities rounded to the dtype.
    (The registry's `attention` op is scaled and bias-free, so T5 attention lives here.)
    """
    dt = q.dtype
    s = torch.matmul(q.float().transpose(1, 2), k.float().permute(0, 2, 3, 1)).to(dt) + bias
    p = torch.softmax(s.float(), dim=-1).to(dt)
    return torch.matmul(p.float(), v.float().transpose(1, 2)).to(dt).transpose(1, 2)


class _Embedding(nn.Module):
    """Key `<name>.weight` [num, dim]; a plain lookup (no arithmetic)."""

    def __init__(self, num: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num, dim, device="meta"))


class _RelativeBias(nn.Module):
    """Key `<name>.embedding.weight` [num_buckets, num_heads]."""

    def __init__(self, cfg: UMT5Config):
        super().__init__()
        self.embedding = _Embedding(cfg.num_buckets, cfg.num_heads)

    def forward(self, buckets: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """buckets [Lq, Lk] -> bias [1, H, Lq, Lk] in `dtype`."""
        return F.embedding(buckets, self.embedding.weight).to(dtype).permute(2, 0, 1).unsqueeze(0)


class T5Attention(nn.Module):
    """Keys `q`, `k`, `v`, `o` (no bias)."""

    def __init__(self, ops: OpTable, cfg: UMT5Config):
        super().__init__()
        self.ops, self.heads = ops, cfg.num_heads
        self.q = Linear(ops, cfg.dim, cfg.dim_attn, bias=False)
        self.k = Linear(ops, cfg.dim, cfg.dim_attn, bias=False)
        self.v = Linear(ops, cfg.dim, cfg.dim_attn, bias=False)
        self.o = Linear(ops, cfg.dim_attn, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        B, L, _ = x.shape
        q, k, v = (m(x).view(B, L, self.heads, -1) for m in (self.q, self.k, self.v))
        return self.o(biased_attention(q, k, v, bias).reshape(B, L, -1))


class T5FeedForward(nn.Module):
    """Keys `gate.0` (the GELU branch), `fc1` (the linear branch), `fc2`; all without bias."""

    def __init__(self, ops: OpTable, cfg: UMT5Config):
        super().__init__()
        self.gate = nn.ModuleList([Linear(ops, cfg.dim, cfg.dim_ffn, bias=False)])
        self.fc1 = Linear(ops, cfg.dim, cfg.dim_ffn, bias=False)
        self.fc2 = Linear(ops, cfg.dim_ffn, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(x) * _gelu_tanh(self.gate[0](x)))


class T5Block(nn.Module):
    def __init__(self, ops: OpTable, cfg: UMT5Config):
        super().__init__()
        self.norm1 = RMSNorm(ops, cfg.dim, cfg.eps)
        self.attn = T5Attention(ops, cfg)
        self.norm2 = RMSNorm(ops, cfg.dim, cfg.eps)
        self.ffn = T5FeedForward(ops, cfg)
        self.pos_embedding = None if cfg.shared_pos else _RelativeBias(cfg)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = _fp16_clamp(x + self.attn(self.norm1(x), bias))
        return _fp16_clamp(x + self.ffn(self.norm2(x)))


class UMT5Encoder(nn.Module):
    """umT5 encoder with the published key names; parameters are created on the meta device
    (fill them with `liveavatar_rt.io.text.load_umt5`, or `load_state_dict(sd, assign=True)`).

    The compute dtype is `ops.dtype` (bf16 = published numerics, fp32 = high-precision reference).
    """

    def __init__(self, cfg: UMT5Config | str = "umt5-xxl", ops: OpTable | None = None):
        super().__init__()
        self.cfg = UMT5Config.preset(cfg) if isinstance(cfg, str) else cfg
        self.ops = ops if ops is not None else OpTable("cpu", torch.float32)
        c = self.cfg
        self.token_embedding = _Embedding(c.vocab_size, c.dim)
        self.pos_embedding = _RelativeBias(c) if c.shared_pos else None
        self.blocks = nn.ModuleList(T5Block(self.ops, c) for _ in range(c.num_layers))
        self.norm = RMSNorm(self.ops, c.dim, c.eps)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """ids: int64 [B, L]; mask: [B, L] (nonzero = real token; None = all real) ->
        [B, L, dim] in the compute dtype. Padded queries are computed too (as published)."""
        if self.token_embedding.weight.is_meta:
            raise RuntimeError("UMT5Encoder has no weights yet (built on the meta device); "
                               "load them with liveavatar_rt.io.text.load_umt5")
        if ids.dim() != 2:
            raise ValueError(f"ids must be [B, L], got shape {tuple(ids.shape)}")
        if mask is not None and mask.shape != ids.shape:
            raise ValueError(f"mask shape {tuple(mask.shape)} != ids shape {tuple(ids.shape)}")
        dt, c = self.ops.dtype, self.cfg
        B, L = ids.shape
        dev = self.token_embedding.weight.device
        ids = ids.to(dev)
        x = F.embedding(ids, self.token_embedding.weight).to(dt)
        buckets = relative_buckets(L, L, c.num_buckets, c.max_dist, dev)
        keep = None if mask is None else (mask.to(dev) != 0).view(B, 1, 1, L)
        lowest = torch.finfo(dt).min

        def bias_of(table: _RelativeBias) -> torch.Tensor:
            b = table(buckets, dt)
            return b if keep is None else b.masked_fill(~keep, lowest)

        shared = bias_of(self.pos_embedding) if c.shared_pos else None
        for blk in self.blocks:
            x = blk(x, shared if c.shared_pos else bias_of(blk.pos_embedding))
        return self.norm(x)

    @torch.no_grad()
    def encode(self, ids: torch.Tensor, mask: torch.Tensor, trim: bool = True) -> list[torch.Tensor]:
        """The pipeline's text context: [out_i[:len_i] for each prompt], len_i = mask_i.sum().

        trim: run only the first max(len_i) positions when every mask is right-padded (ones
        then zeros). Real tokens never attend to padding (the masked probabilities are exactly
        0), so this equals the published full-length run up to fp32 summation order, and is
        up to text_len / len times faster.
        """
        lens = (mask != 0).sum(dim=1)
        if trim:
            n = int(lens.max()) if lens.numel() else 0
            pos = torch.arange(mask.shape[1], device=mask.device)
            if bool(((mask != 0) == (pos[None, :] < lens[:, None])).all()):
                ids, mask = ids[:, :n], mask[:, :n]
            if n == 0:
                return [torch.zeros(0, self.cfg.dim, dtype=self.ops.dtype, device=self.token_embedding.weight.device)
                        for _ in range(ids.shape[0])]
        out = self(ids, mask)
        return [u[:v] for u, v in zip(out, lens.tolist())]
