"""Model construction and the flow-matching pieces shared by the DiT stages."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from liveavatar_rt.config import from_name
from liveavatar_rt.model import CausalWanS2V
from liveavatar_rt.model.init import init_random_
from liveavatar_rt.ops import OpTable

from .common import stage_dir
from .dit_forward import TrainForward

LATENT_HW = (16, 16)  # 128 x 128 video
SHIFT = 3.0


def build_dit(seed: int = 0) -> CausalWanS2V:
    """The tiny preset in fp32 with reference ops (every op differentiable), trainable."""
    model = init_random_(CausalWanS2V(from_name("tiny"), OpTable("cpu", torch.float32, force="ref")), seed=seed)
    for p in model.parameters():
        p.requires_grad_(True)
    return model.train()


def load_dit(run, stage: str) -> CausalWanS2V:
    path = stage_dir(run, stage) / "ckpt.pt"
    if not path.exists():
        raise FileNotFoundError(f"{path} missing: run `python -m recipes.tiny.train.{stage} --run {run}` first")
    model = build_dit()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=False)["model"])
    return model


def shifted(sigma: torch.Tensor, shift: float = SHIFT) -> torch.Tensor:
    return shift * sigma / (1 + (shift - 1) * sigma)


def sample_sigma(rng: np.random.Generator, batch: int) -> torch.Tensor:
    """Training noise levels: uniform then shifted as the sampler's schedule is (more time at high noise)."""
    return shifted(torch.from_numpy(rng.uniform(0.0, 1.0, batch).astype(np.float32)))


def noisy(x0: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Rectified flow: x_sigma = (1 - sigma) x0 + sigma noise; velocity target = noise - x0."""
    s = sigma.view(-1, *([1] * (x0.dim() - 1)))
    return (1 - s) * x0 + s * noise


class Conditioner:
    """Per batch: conditioning K/V (with grad), text K/V and audio tokens. `drop_audio` rows get
    the features of digital silence (audio dropout), so a teacher can be guided on audio."""

    def __init__(self, model: CausalWanS2V):
        self.fwd = TrainForward(model, LATENT_HW)

    def __call__(self, batch: dict, drop_audio: torch.Tensor | None = None):
        B = batch["x0"].shape[0]
        text_kv = self.fwd.text_kv(B)
        cond = self.fwd.cond(batch["ref"], batch["motion"], text_kv)
        feats = batch["feats"]
        if drop_audio is not None and drop_audio.any():
            feats = torch.where(drop_audio.view(-1, 1, 1, 1, 1), torch.full_like(feats, SILENCE), feats)
        return text_kv, cond, self.fwd.audio(feats)


SILENCE = -2.1  # the tiny front end's normalised log-mel of digital silence (audio/features.py)


def save_weights(model: CausalWanS2V, path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(path))
