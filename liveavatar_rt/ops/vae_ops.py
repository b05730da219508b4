"""Wan VAE primitives with the published precision (CUDA bf16 autocast) rules.

- `vae_rms_norm`: the VAE's channel RMS norm is `F.normalize(x, dim=1) * sqrt(C) * gamma`.
  Under CUDA autocast the `norm` inside F.normalize runs in fp32 and the bf16 input is promoted
  by the division, so the whole expression is fp32 and its result stays fp32 (the following
  SiLU is fp32 too; only the next convolution rounds to bf16).
- `vae_upsample2x`: nearest-exact 2x upsampling, computed on an fp32 copy (the published
  `Upsample` does `.float()` because nearest on bf16 was unsupported) and cast back.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .registry import OPS, define


@define("vae_rms_norm")
def vae_rms_norm(x: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """x: [B, C, ...] (channel first) -> fp32 [B, C, ...]; gamma broadcastable ([C, 1, ...]).

    Order of operations as published: unit-normalise over C (eps 1e-12 clamp on the norm),
    then multiply by sqrt(C), then by gamma.
    """
    scale = x.shape[1] ** 0.5
    return F.normalize(x.float(), dim=1) * scale * gamma.float()


@define("vae_upsample2x")
def vae_upsample2x(x: torch.Tensor) -> torch.Tensor:
    """x: [N, C, H, W] -> [N, C, 2H, 2W] in x's dtype, nearest-exact computed in fp32."""
    return F.interpolate(x.float(), scale_factor=(2.0, 2.0), mode="nearest-exact").to(x.dtype)


def _channel_sum_rms_norm(x: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """Provider `chansum`: the norm as sqrt(sum over C of x^2) on a contiguous tensor, which
    reduces along a strided axis with unit-stride vector loads instead of linalg's generic
    strided reduction (~8x faster on CPU); same formula, fp32, different summation order."""
    xf = x.float().contiguous()
    norm = xf.square().sum(dim=1, keepdim=True).sqrt().clamp_min(1e-12)
    return xf / norm * (x.shape[1] ** 0.5) * gamma.float()


OPS["vae_rms_norm"].register("chansum", _channel_sum_rms_norm, priority=10,
                             supports=lambda device, dtype: None, differentiable=True)
