"""CausalWanModel_S2V: the Live Avatar generator, with the published state_dict key names.

Two entry points, matching the two kinds of published forward:
- `prefill`: the conditioning pass at t = 0 over the reference + motion tokens only; each
  layer's `attend` stores the conditioning K (after norm_k, before RoPE) and V.
- `forward_block`: one denoising step of one block of noisy latent frames; each layer's
  `attend` writes the block's K/V into that step's ring cache and attends over
  [ring ; conditioning keys rotated at the current sink position].
The caches and positions live in `liveavatar_rt.cache`; this file is the network only.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from ..ops import OpTable
from .attention import AttendFn
from .audio import AudioInjector, CausalAudioEncoder
from .block import Block
from .framepack import FramePacker
from .layers import Linear, PatchConv

TextKV = list[tuple[torch.Tensor, torch.Tensor]]


def sinusoidal_embedding(dim: int, t: torch.Tensor) -> torch.Tensor:
    """t: [N] -> float64 [N, dim] = [cos(t w), sin(t w)], w = 10000^(-i/(dim/2)), in float64."""
    half = dim // 2
    pos = t.to(torch.float64)
    # arange made on t's device (same integer values): a CUDA graph cannot capture a host copy
    ang = torch.outer(pos, torch.pow(10000, -torch.arange(half, dtype=pos.dtype, device=pos.device).div(half)))
    return torch.cat([ang.cos(), ang.sin()], dim=1)


class _MLP(nn.Sequential):
    """Keys `<name>.0`, `<name>.2` (text/time embeddings): Linear, activation, Linear."""

    def __init__(self, ops, din: int, dout: int, act: nn.Module):
        super().__init__(Linear(ops, din, dout), act, Linear(ops, dout, dout))

    def forward(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return self[2](self[1](self[0](x, dtype)), dtype)


class _TimeProjection(nn.Sequential):
    """Key `time_projection.1`: SiLU, Linear(dim -> 6 dim)."""

    def __init__(self, ops, dim: int):
        super().__init__(nn.SiLU(), Linear(ops, dim, 6 * dim))


class Head(nn.Module):
    """Keys `head.head`, `head.modulation`; fp32 region as published."""

    def __init__(self, ops, cfg: ModelConfig):
        super().__init__()
        self.ops, self.eps = ops, cfg.eps
        self.head = Linear(ops, cfg.dim, math.prod(cfg.patch_size) * cfg.out_dim)
        self.modulation = nn.Parameter(torch.empty(1, 2, cfg.dim, device="meta"))

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """x: [B, F*S, C] compute dtype; e: fp32 [B, F, C] -> [B, F*S, 64] compute dtype."""
        B, L, C = x.shape
        Fr = e.shape[1]
        m = self.modulation.float().unsqueeze(0) + e.unsqueeze(2)  # [B, F, 2, C]
        shift, scale = m[:, :, 0:1], m[:, :, 1:2]
        h = self.ops.layer_norm(x, None, None, self.eps).to(x.dtype)  # published type_as(x)
        h = (h.reshape(B, Fr, L // Fr, C).float() * (1 + scale) + shift).reshape(B, L, C)
        return self.head(h, torch.float32).to(x.dtype)


class CausalWanS2V(nn.Module):
    """The generator. Parameters are created on the meta device; load with `liveavatar_rt.io`."""

    def __init__(self, cfg: ModelConfig, ops: OpTable | None = None):
        super().__init__()
        self.cfg = cfg
        self.ops = ops if ops is not None else OpTable("cpu", torch.float32)
        o = self.ops
        self.patch_embedding = PatchConv(o, cfg.in_dim, cfg.dim, cfg.patch_size)
        self.cond_encoder = PatchConv(o, cfg.cond_dim, cfg.dim, cfg.patch_size)
        self.text_embedding = _MLP(o, cfg.text_dim, cfg.dim, nn.GELU(approximate="tanh"))
        self.time_embedding = _MLP(o, cfg.freq_dim, cfg.dim, nn.SiLU())
        self.time_projection = _TimeProjection(o, cfg.dim)
        self.blocks = nn.ModuleList(Block(o, cfg) for _ in range(cfg.num_layers))
        self.head = Head(o, cfg)
        self.casual_audio_encoder = CausalAudioEncoder(o, cfg)  # sic: published key name
        self.audio_injector = AudioInjector(o, cfg)
        self.trainable_cond_mask = nn.Embedding(3, cfg.dim, device="meta")
        self.frame_packer = FramePacker(o, cfg)

    # ---- per-session inputs -------------------------------------------------------------
    def text_kv(self, text: torch.Tensor) -> TextKV:
        """text: [Lt, text_dim] or [B, Lt, text_dim] encoder output (real length, Lt <= text_len).
        Zero-pads to text_len, embeds, and returns each layer's cross-attention (k, v)
        [B, text_len, H, D]: constant for a session, so computed once."""
        if text.dim() == 2:
            text = text.unsqueeze(0)
        B, Lt, D = text.shape
        if D != self.cfg.text_dim:
            raise ValueError(f"text embedding width {D} != text_dim {self.cfg.text_dim}")
        if Lt > self.cfg.text_len:
            raise ValueError(f"text has {Lt} tokens, more than text_len {self.cfg.text_len}")
        padded = torch.cat([text, text.new_zeros(B, self.cfg.text_len - Lt, D)], dim=1)
        ctx = self.text_embedding(padded, self.ops.dtype)
        return [blk.cross_attn.project_kv(ctx) for blk in self.blocks]

    def time_embed(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """t: [B, F] timesteps -> (e fp32 [B, F, C] for the head, e0 fp32 [B, F, 6, C])."""
        e = self.time_embedding(sinusoidal_embedding(self.cfg.freq_dim, t.flatten()).float(), torch.float32)
        e0 = self.time_projection[1](F.silu(e), torch.float32)
        B, Fr = t.shape
        return e.reshape(B, Fr, -1), e0.reshape(B, Fr, 6, -1)

    def audio_tokens(self, audio: torch.Tensor, prefix: int, drop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """audio: [B, layers, audio_dim, T] features of one block (T video frames).

        The first frame is repeated `prefix` times in front (published: 73), the causal encoder
        runs, and the first `drop` latent frames (published: 19) are discarded.
        Returns (tokens [B, F, n+1, C], global [B, F, 1, C]) in the compute dtype."""
        x = torch.cat([audio[..., :1].expand(*audio.shape[:-1], prefix), audio], dim=-1)
        glob, loc = self.casual_audio_encoder(x)
        return loc[:, drop:], glob[:, drop:]

    # ---- forwards -----------------------------------------------------------------------
    def cond_tokens(self, ref_latent: torch.Tensor, motion: torch.Tensor) -> torch.Tensor:
        """ref_latent: [B, 16, 1, h, w], motion: [B, 16, T, h, w] -> [B, Lc, C] compute dtype,
        with the cond-type embedding added (1 reference, 2 motion)."""
        ref = self.patch_embedding(ref_latent)
        mot = self.frame_packer(motion)
        w = self.trainable_cond_mask.weight.to(self.ops.dtype)
        return torch.cat([ref + w[1], mot + w[2]], dim=1)

    def cond_pass(self, ref_latent: torch.Tensor, motion: torch.Tensor, text_kv: TextKV,
                  attend: Callable[[int], AttendFn]) -> torch.Tensor:
        """The t = 0 conditioning pass (differentiable); `attend(layer)` sees each layer's
        q/k/v of the conditioning tokens. Returns the last hidden states [B, Lc, C]."""
        x = self.cond_tokens(ref_latent, motion)
        _, e0 = self.time_embed(torch.zeros(x.shape[0], 1, device=x.device))
        for i, blk in enumerate(self.blocks):
            x = blk(x, e0, text_kv[i], attend(i))
        return x

    @torch.no_grad()
    def prefill(self, ref_latent: torch.Tensor, motion: torch.Tensor, text_kv: TextKV,
                attend: Callable[[int], AttendFn]) -> None:
        """Inference: the conditioning pass; `attend(layer)` records each layer's K/V."""
        self.cond_pass(ref_latent, motion, text_kv, attend)

    @torch.no_grad()
    def forward_block(self, latent: torch.Tensor, t: torch.Tensor, cond_states: torch.Tensor, text_kv: TextKV,
                      audio: tuple[torch.Tensor, torch.Tensor], attend: Callable[[int], AttendFn],
                      temb: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Inference: one denoising step of one block (see `forward`)."""
        return self(latent, t, cond_states, text_kv, audio, attend, temb)

    def forward(self, latent: torch.Tensor, t: torch.Tensor, cond_states: torch.Tensor, text_kv: TextKV,
                audio: tuple[torch.Tensor, torch.Tensor], attend: Callable[[int], AttendFn],
                temb: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """The velocity of noisy latent frames (differentiable; training calls it directly).

        latent: [B, 16, F, h, w]; t: [B, F] timesteps; cond_states: [B, 16, F, h, w] (pose,
        zeros when absent); audio: `audio_tokens(...)` for these frames; `attend(layer)` decides
        what each frame attends to (the ring cache at inference, a mask in training); temb:
        `time_embed(t)` when the caller keeps it (it depends on t only), else computed here.
        -> velocity, same shape as latent, in the compute dtype."""
        B, _, Fr, H, W = latent.shape
        x = self.patch_embedding(latent) + self.cond_encoder(cond_states)
        x = x + self.trainable_cond_mask.weight[0].to(x.dtype)
        e, e0 = self.time_embed(t) if temb is None else temb
        tokens, glob = audio
        for i, blk in enumerate(self.blocks):
            x = blk(x, e0, text_kv[i], attend(i))
            x = self.audio_injector(i, x, tokens, glob)
        out = self.head(x, e)  # [B, F*h*w, 64]
        h, w = H // 2, W // 2
        c = self.cfg.out_dim
        out = out.reshape(B, Fr, h, w, 1, 2, 2, c)
        return torch.einsum("bfhwpqrc->bcfphqwr", out).reshape(B, c, Fr, H, W)
