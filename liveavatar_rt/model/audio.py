"""Causal audio encoder and audio injector (published keys `casual_audio_encoder.*`,
`audio_injector.injector.N.*`, `audio_injector.injector_adain_layers.N.linear.*`).

The encoder runs in fp32 (published `autocast(dtype=float32)` region): it mixes the 25 wav2vec2
layers with SiLU weights normalised by their sum, then a causal Conv1d stack with replicate
padding. The local path yields `num_audio_tokens` tokens per latent frame plus a learned padding
token; the global path one token per latent frame for the AdaLN of the injector.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .attention import CrossAttention
from .layers import Linear


class _ConvParams(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(cout, cin, kernel, device="meta"))
        self.bias = nn.Parameter(torch.empty(cout, device="meta"))


class CausalConv1d(nn.Module):
    """Key `<name>.conv.{weight,bias}`; replicate-padded causal conv as unfold + fp32 matmul."""

    def __init__(self, ops, cin: int, cout: int, kernel: int = 3, stride: int = 1):
        super().__init__()
        self.conv = _ConvParams(cin, cout, kernel)
        self.kernel, self.stride, self.ops = kernel, stride, ops

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, C, T] fp32 -> [B, Cout, T'] fp32, T' = (T - 1) // stride + 1."""
        x = F.pad(x, (self.kernel - 1, 0), mode="replicate")
        cols = x.unfold(2, self.kernel, self.stride).permute(0, 2, 1, 3).flatten(2)  # [B, T', C*k]
        w = self.conv.weight.reshape(self.conv.weight.shape[0], -1)
        return self.ops.linear(cols, w, self.conv.bias, torch.float32).transpose(1, 2)


class MotionEncoderTC(nn.Module):
    def __init__(self, ops, in_dim: int, hidden: int, num_tokens: int):
        super().__init__()
        self.ops, self.num_tokens, self.hidden = ops, num_tokens, hidden
        self.conv1_local = CausalConv1d(ops, in_dim, hidden // 4 * num_tokens)
        self.conv1_global = CausalConv1d(ops, in_dim, hidden // 4)
        self.conv2 = CausalConv1d(ops, hidden // 4, hidden // 2, stride=2)
        self.conv3 = CausalConv1d(ops, hidden // 2, hidden, stride=2)
        self.final_linear = Linear(ops, hidden, hidden)
        self.padding_tokens = nn.Parameter(torch.empty(1, 1, 1, hidden, device="meta"))

    def _norm_act(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, C, T] -> LayerNorm over C (eps 1e-6, no affine) + SiLU -> [N, T, C]."""
        return F.silu(self.ops.layer_norm(x.transpose(1, 2), None, None, 1e-6))

    def _tail(self, x: torch.Tensor) -> torch.Tensor:
        """The conv2/conv3 stack shared by both paths: [N, T, C/4] -> [N, T/4, C]."""
        x = self._norm_act(self.conv2(x.transpose(1, 2)))
        return self._norm_act(self.conv3(x.transpose(1, 2)))

    def forward(self, feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """feat: fp32 [B, T, in_dim] -> (global [B, T', 1, C], local [B, T', n+1, C]), fp32."""
        B = feat.shape[0]
        x = feat.transpose(1, 2)
        loc = self.conv1_local(x)  # [B, n*C/4, T]
        loc = loc.unflatten(1, (self.num_tokens, -1)).flatten(0, 1)  # [(B n), C/4, T]
        loc = self._tail(self._norm_act(loc))  # [(B n), T', C]
        loc = loc.unflatten(0, (B, self.num_tokens)).transpose(1, 2)  # [B, T', n, C]
        pad = self.padding_tokens.float().expand(B, loc.shape[1], 1, self.hidden)
        loc = torch.cat([loc, pad], dim=2)

        glob = self._tail(self._norm_act(self.conv1_global(x)))  # [B, T', C]
        glob = self.final_linear(glob, torch.float32).unsqueeze(2)
        return glob, loc


class CausalAudioEncoder(nn.Module):
    def __init__(self, ops, cfg: ModelConfig):
        super().__init__()
        self.ops = ops
        self.encoder = MotionEncoderTC(ops, cfg.audio_dim, cfg.dim, cfg.num_audio_tokens)
        self.weights = nn.Parameter(torch.empty(1, cfg.audio_layers, 1, 1, device="meta"))

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """features: [B, layers, audio_dim, T] -> (global [B, T', 1, C], local [B, T', n+1, C])
        in the compute dtype, T' = ceil(T / 4).

        Precision as published: SiLU of the layer weights and the weighted features are in the
        parameter dtype; the sum and the division are fp32.
        """
        dt = self.ops.dtype
        w = F.silu(self.weights.to(dt))
        mixed = ((features.to(dt) * w) / w.float().sum(dim=1, keepdim=True)).sum(dim=1)  # [B, D, T] fp32
        glob, loc = self.encoder(mixed.float().transpose(1, 2))
        return glob.to(dt), loc.to(dt)


class AdaLayerNorm(nn.Module):
    """diffusers AdaLayerNorm(chunk_dim=1): LN(eps 1e-5, no affine) * (1 + scale) + shift."""

    def __init__(self, ops, dim: int):
        super().__init__()
        self.ops = ops
        self.linear = Linear(ops, dim, 2 * dim)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        """x: [N, S, C]; temb: [N, C] compute dtype -> fp32 [N, S, C].
        shift/scale stay in the compute dtype, so `1 + scale` rounds there (published)."""
        shift, scale = self.linear(F.silu(temb)).chunk(2, dim=1)
        return self.ops.layer_norm(x, None, None, 1e-5) * (1 + scale[:, None]) + shift[:, None]


class AudioInjector(nn.Module):
    """AdaLN + per-latent-frame cross-attention to the frame's audio tokens, added ungated."""

    def __init__(self, ops, cfg: ModelConfig):
        super().__init__()
        n = len(cfg.audio_inject_layers)
        self.layer_to_slot = {layer: i for i, layer in enumerate(cfg.audio_inject_layers)}
        self.injector = nn.ModuleList(CrossAttention(ops, cfg.dim, cfg.num_heads, cfg.eps) for _ in range(n))
        self.injector_adain_layers = nn.ModuleList(AdaLayerNorm(ops, cfg.dim) for _ in range(n))

    def forward(self, layer: int, x: torch.Tensor, tokens: torch.Tensor, glob: torch.Tensor) -> torch.Tensor:
        """x: [B, F*S, C] noisy tokens after block `layer`; tokens: [B, F, n+1, C];
        glob: [B, F, 1, C]. Returns x + injection (compute dtype); x unchanged if `layer` has none."""
        slot = self.layer_to_slot.get(layer)
        if slot is None:
            return x
        B, L, C = x.shape
        Fr = tokens.shape[1]
        h = x.reshape(B * Fr, L // Fr, C)
        h = self.injector_adain_layers[slot](h, glob.reshape(B * Fr, C))
        attn = self.injector[slot]
        out = attn(h, attn.project_kv(tokens.reshape(B * Fr, -1, C)))
        return x + out.reshape(B, L, C)
