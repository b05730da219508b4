"""Activations with the published precision: computed on the compute-dtype tensor (torch
upcasts bf16 to fp32 inside the kernel and rounds the result once)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .registry import define


@define("gelu_tanh")
def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GELU, tanh approximation (the FFN's `nn.GELU(approximate="tanh")`): x [...] -> x's dtype."""
    return F.gelu(x, approximate="tanh")
