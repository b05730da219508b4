"""Flow-matching Euler sampler with the published schedule and update precision (SPEC 2).

The schedule is diffusers' FlowMatchEulerDiscreteScheduler(shift, 1000 train steps) after
`set_timesteps(steps)`: with 4 steps and shift 3, sigmas = [1, 0.8576923, 0.6021506, 0.0089286, 0]
and timesteps = 1000 * sigmas[:-1] (fp32).
"""
from __future__ import annotations

import numpy as np
import torch


def _shift(s, shift: float):
    return shift * s / (1 + (shift - 1) * s)


def flow_schedule(steps: int, shift: float = 3.0, num_train: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (sigmas fp32 [steps + 1] ending in 0, timesteps fp32 [steps])."""
    if steps < 1:
        raise ValueError(f"sampling steps must be >= 1, got {steps}")
    train = torch.from_numpy(np.linspace(1, num_train, num_train, dtype=np.float32)[::-1].copy())
    train_sigmas = _shift(train / num_train, shift)
    sigma_max, sigma_min = train_sigmas[0].item(), train_sigmas[-1].item()
    sig = np.linspace(sigma_max * num_train, sigma_min * num_train, steps) / num_train
    sigmas = torch.from_numpy(_shift(sig, shift)).to(torch.float32)
    timesteps = sigmas * num_train
    return torch.cat([sigmas, sigmas.new_zeros(1)]), timesteps


def euler_step(x: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
    """x <- x + (sigma_next - sigma) * v, as diffusers does it: the product is formed in v's dtype
    (a 0-d fp32 tensor does not promote), added to fp32(x), and rounded back to v's dtype."""
    return (x.float() + (sigma_next - sigma) * v).to(v.dtype)
