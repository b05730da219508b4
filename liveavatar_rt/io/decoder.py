"""A TAEHV-layout decoder given by the user (`from_pretrained(decoder=...)`, `--decoder`)."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ..model.vae import WanVAE


def load_decoder(path: str | os.PathLike, vae: WanVAE, dtype: torch.dtype, device: str):
    """A TAEHV-layout decoder from a user's file, checked against the VAE's latent space:
    same latent channels, the same x8 space and x4 time upscaling."""
    from ..model.taehv import load_taehv

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"decoder weights {str(path)!r} do not exist (a TAEHV-layout .pth / .safetensors, "
                                "e.g. taew2_1.pth for the 14B)")
    tae = load_taehv(path, config=None, dtype=dtype, device=device)
    cfg, z = tae.config, vae.config.z_dim
    if (cfg.latent_channels, cfg.decoder_space_factor, cfg.t_upscale) != (z, 8, 4):
        raise ValueError(f"decoder {path.name}: {cfg.latent_channels} latent channels, space x{cfg.decoder_space_factor}, "
                         f"time x{cfg.t_upscale}; the model's VAE needs {z}, x8, x4")
    return tae
