"""Frame packer: motion latents -> conditioning tokens (published keys `frame_packer.proj*`).

The last 19 motion latent frames split, oldest first, into buckets of 16, 2 and 1 frames; the
newest frame is patchified 1x2x2 (`proj`), the next two 2x4x4 (`proj_2x`), the oldest sixteen
4x8x8 (`proj_4x`). Tokens are ordered post, 2x, 4x. Fewer than 19 frames are zero-padded at the
old end, as published (`padd` drop mode).
"""
from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from .layers import PatchConv


class FramePacker(nn.Module):
    def __init__(self, ops, cfg: ModelConfig):
        super().__init__()
        self.buckets = cfg.zip_frame_buckets
        self.proj = PatchConv(ops, cfg.in_dim, cfg.dim, (1, 2, 2))
        self.proj_2x = PatchConv(ops, cfg.in_dim, cfg.dim, (2, 4, 4))
        self.proj_4x = PatchConv(ops, cfg.in_dim, cfg.dim, (4, 8, 8))

    def forward(self, motion: torch.Tensor) -> torch.Tensor:
        """motion: [B, 16, T, H, W] latents -> tokens [B, S + S/8 + S/8 (for 19 frames), C]."""
        B, C, T, H, W = motion.shape
        if H % 8 or W % 8:
            raise ValueError(f"motion latent {H}x{W} must be divisible by 8 for the 4x8x8 packer")
        total = sum(self.buckets)
        padded = motion.new_zeros(B, C, total, H, W)
        keep = min(total, T)
        if keep:
            padded[:, :, total - keep:] = motion[:, :, T - keep:]
        b1, b2, b4 = self.buckets
        four, two, post = padded.split([b4, b2, b1], dim=2)
        return torch.cat([self.proj(post), self.proj_2x(two), self.proj_4x(four)], dim=1)
