"""The op table the planner traces with: the GPU path's tensor footprint, runnable anywhere.

On the meta device every op resolves to its plain-PyTorch reference, and three references
allocate what the GPU providers never do: `attention` and `rolling_attention` build the full
[Lq, Lk] fp32 score matrix (meta SDPA takes the math path) where the Triton / flash kernels keep
scores on chip, and `fp8_linear` dequantizes the weight to fp32 where `torch._scaled_mm` reads
E4M3 directly. Those three are replaced by stand-ins that allocate exactly the tensors the GPU
provider returns (and, for fp8_linear, the quantized activation it makes first); every other op
runs its reference. The stand-ins compute nothing: a table for sizing, never for results.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..ops import OpTable
from ..ops.fp8_linear import quantize_e4m3

STAND_INS = ("attention", "rolling_attention", "fp8_linear")


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Fused attention: its output [B, Lq, H, D] in q's dtype is its only tensor."""
    return torch.empty_like(q)


def _rolling_attention(q, ring_k, ring_v, valid, cond_k, cond_v, cond_cos, cond_sin) -> torch.Tensor:
    """The Triton kernel reads the ring and rotates the cond keys on the fly: output only."""
    return torch.empty_like(q)


def _fp8_linear(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
                bias: Optional[torch.Tensor]) -> torch.Tensor:
    """The `scaled_mm` provider's tensors: the E4M3 activation, a bf16 GEMM output, the cast."""
    x2 = x.reshape(-1, x.shape[-1])
    x8, _ = quantize_e4m3(x2)
    y = torch.empty((x8.shape[0], weight.shape[0]), dtype=torch.bfloat16, device=x.device)
    return y.reshape(*x.shape[:-1], weight.shape[0]).to(x.dtype)


def footprint_ops(device: str | torch.device, dtype: torch.dtype) -> OpTable:
    """References everywhere, fused-kernel stand-ins for STAND_INS (see the module docstring)."""
    ops = OpTable(device, dtype, force="ref")
    for name, fn in zip(STAND_INS, (_attention, _rolling_attention, _fp8_linear)):
        setattr(ops, name, fn)
        ops.chosen[name] = "footprint"
    return ops
