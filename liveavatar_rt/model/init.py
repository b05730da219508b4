"""Seeded random weights for a generator (tests and the placeholder `tiny` default).

Follows the published init scheme where it matters for a sane forward pass: Xavier-uniform
Linears with zero bias, N(0, 0.02) embeddings, modulations ~ N(0, 1/dim), unit norm weights.
"""
from __future__ import annotations

import torch

from .dit import CausalWanS2V


@torch.no_grad()
def init_random_(model: CausalWanS2V, seed: int = 0, dtype: torch.dtype | None = None,
                 device: str | torch.device = "cpu") -> CausalWanS2V:
    """Materialise every (meta) parameter with seeded random values, in place."""
    g = torch.Generator().manual_seed(seed)
    dtype = dtype or model.ops.dtype
    dim = model.cfg.dim
    for name, p in list(model.named_parameters()):
        shape, leaf = p.shape, name.rsplit(".", 1)[-1]
        if "norm" in name and leaf == "weight":
            val = torch.ones(shape)
        elif leaf == "bias" or name.endswith("padding_tokens"):
            val = torch.zeros(shape)
        elif name.endswith("modulation"):
            val = torch.randn(shape, generator=g) / dim**0.5
        elif name.endswith("casual_audio_encoder.weights"):
            val = torch.full(shape, 0.01)
        elif p.dim() == 2 and ("embedding" in name or "trainable_cond_mask" in name):
            val = torch.randn(shape, generator=g) * 0.02
        else:
            fan_out, fan_in = shape[0], p[0].numel()
            bound = (6.0 / (fan_in + fan_out)) ** 0.5
            val = (torch.rand(shape, generator=g) * 2 - 1) * bound
        mod_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(mod_name), attr, torch.nn.Parameter(val.to(device=device, dtype=dtype), requires_grad=False))
    return model.eval()
