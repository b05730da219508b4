"""Load Wan2.1 VAE weights (`.safetensors`, or the published fp32 `.pth` state dict)."""
from __future__ import annotations

from pathlib import Path

import torch

from ..model.vae import VAEConfig, WanVAE
from ..ops import OpTable


class VAECheckpointError(ValueError):
    """The checkpoint does not match the VAE built from the config."""


def read_vae_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a `.safetensors` file or of a `.pth` holding a plain state dict (CPU)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"VAE checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    if path.suffix in (".pth", ".pt", ".bin"):
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
        if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
            raise VAECheckpointError(f"{path}: expected a plain state dict of tensors, got {type(sd).__name__}")
        return sd
    raise VAECheckpointError(f"{path}: unknown checkpoint format {path.suffix!r} (want .safetensors or .pth)")


def check_vae_state_dict(sd: dict[str, torch.Tensor], expected: dict[str, torch.Size], source: str = "checkpoint") -> None:
    """Raise one VAECheckpointError listing every missing key, unexpected key and shape mismatch."""
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    mismatched = sorted(k for k in set(sd) & set(expected) if tuple(sd[k].shape) != tuple(expected[k]))
    if not (missing or unexpected or mismatched):
        return
    lines = [f"{source} does not match the VAE config:"]
    if missing:
        lines.append(f"  missing keys ({len(missing)}): " + ", ".join(missing))
    if unexpected:
        lines.append(f"  unexpected keys ({len(unexpected)}): " + ", ".join(unexpected))
    for k in mismatched:
        lines.append(f"  shape mismatch {k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(expected[k])}")
    raise VAECheckpointError("\n".join(lines))


def load_vae(path: str | Path, config: VAEConfig = VAEConfig(), dtype: torch.dtype = torch.bfloat16,
             device: str | torch.device = "cpu", ops: OpTable | None = None) -> WanVAE:
    """Build a `WanVAE` for `config` in `dtype` on `device` and load `path` into it.

    Weights are cast to `dtype` (round to nearest even, as the published `.to(dtype)`).
    """
    sd = read_vae_state_dict(path)
    vae = WanVAE(config, dtype=dtype, device="meta", ops=ops if ops is not None else OpTable(device, dtype))
    check_vae_state_dict(sd, {k: v.shape for k, v in vae.state_dict().items()}, source=str(path))
    sd = {k: v.to(device=device, dtype=dtype) for k, v in sd.items()}
    vae.load_state_dict(sd, strict=True, assign=True)
    vae.materialize_buffers_(device)
    return vae.requires_grad_(False).eval()
