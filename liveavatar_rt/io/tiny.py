"""The single-file format of the bundled `tiny` model: one safetensors file holding the DiT
(`dit.<published key>`) and the VAE (`vae.<published key>`), with what is needed to rebuild them
in its metadata (`format`, `preset`, `vae_dim`, the VAE's latent mean/std, and free-form
`info` - the recipe's stages and steps).

    save_tiny(path, dit_state, vae_state, vae_config, info={...})
    model, vae, meta = load_tiny(path, ops)
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..config import from_name
from ..model import CausalWanS2V
from ..model.vae import VAEConfig, WanVAE
from ..ops import OpTable
from .fill import fill_module

FORMAT = "liveavatar_rt-tiny/1"


def save_tiny(path: str | os.PathLike, dit_state: dict[str, torch.Tensor], vae_state: dict[str, torch.Tensor],
              vae_config: VAEConfig, preset: str = "tiny", info: dict | None = None,
              dtype: torch.dtype = torch.bfloat16) -> None:
    from safetensors.torch import save_file

    tensors = {f"dit.{k}": v.detach().to(dtype).contiguous() for k, v in dit_state.items()}
    tensors |= {f"vae.{k}": v.detach().to(dtype).contiguous() for k, v in vae_state.items()}
    meta = {"format": FORMAT, "preset": preset, "vae_dim": str(vae_config.dim),
            "latent_mean": json.dumps(list(vae_config.latent_mean)), "latent_std": json.dumps(list(vae_config.latent_std)),
            "info": json.dumps(info or {})}
    save_file(tensors, str(path), metadata=meta)


def read_meta(path: str | os.PathLike) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a liveavatar_rt tiny model file (format {meta.get('format')!r}, "
                         f"expected {FORMAT!r})")
    return meta


def load_tiny(path: str | os.PathLike, ops: OpTable) -> tuple[CausalWanS2V, WanVAE, dict]:
    """-> (DiT, VAE, metadata with `info` decoded); weights cast to the OpTable's dtype/device."""
    from safetensors import safe_open

    path = Path(path)
    meta = read_meta(path)
    cfg = from_name(meta["preset"])
    vae_cfg = VAEConfig(dim=int(meta["vae_dim"]), latent_mean=json.loads(meta["latent_mean"]),
                        latent_std=json.loads(meta["latent_std"]))
    dit_items, vae_sd = [], {}
    with safe_open(str(path), "pt") as f:
        for key in f.keys():
            part, _, name = key.partition(".")
            if part == "dit":
                dit_items.append((name, f.get_tensor(key)))
            elif part == "vae":
                vae_sd[name] = f.get_tensor(key).to(device=ops.device, dtype=ops.dtype)
            else:
                raise ValueError(f"{path}: tensor {key!r} belongs to neither 'dit.' nor 'vae.'")
    model = fill_module(CausalWanS2V(cfg, ops), dit_items, lambda k, t: t.to(device=ops.device, dtype=ops.dtype),
                        f"{path} does not fit the {meta['preset']} DiT")
    vae = WanVAE(vae_cfg, dtype=ops.dtype, device="meta", ops=ops)
    missing = set(vae.state_dict()) ^ set(vae_sd)
    if missing:
        raise ValueError(f"{path}: VAE keys differ from the model: {sorted(missing)[:12]}")
    vae.load_state_dict(vae_sd, strict=True, assign=True)
    vae.materialize_buffers_(ops.device)
    return model, vae.requires_grad_(False).eval(), {**meta, "info": json.loads(meta.get("info", "{}"))}
