"""The block's norm chains as two ops, so a provider can run each chain in one pass.

model/block.py, with the published precision rules (x the block input in the compute dtype,
xf the fp32 residual stream, per-frame shift/scale/gate [B|1, F, 1, C] fp32):

    h1      = ln_modulate(x, shift1, scale1)          modulate(dtype(LN(x)), ...)      (norm1)
    xf, h3  = residual_norm(x, y1, gate1, w3, b3, round_input=True)
              xf = x + y1 * gate1;  h3 = dtype(LN_affine(dtype(xf)))                   (norm3)
    xf, h2  = residual_norm(xf, c, shift=shift2, scale=scale2)
              xf = xf + c;  h2 = modulate(LN(xf), shift2, scale2)                       (norm2)

The references are those compositions of the single-op references (ops/norm.py, ops/modulate.py);
the `cpu` provider (cpu_block_providers.py, csrc/cpu/residual_norm.cpp) is the chain of the
`cpu` layer_norm / modulate / gated_residual kernels in one pass, bit for bit.
"""
from __future__ import annotations

import torch

from .modulate import gated_residual, modulate
from .norm import layer_norm
from .registry import define


def _per_frame(t: torch.Tensor, frames: int) -> torch.Tensor:
    """[B, L, C] -> [B, F, L/F, C] (the per-frame rows' broadcast form)."""
    B, L, C = t.shape
    return t.reshape(B, frames, L // frames, C)


@define("ln_modulate")
def ln_modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float,
                out_dtype: torch.dtype) -> torch.Tensor:
    """x: [B, L, C]; shift, scale: fp32 [B|1, F, 1, C] -> [B, L, C] out_dtype:
    modulate(layer_norm(x) rounded to x's dtype (published type_as(x)), shift, scale)."""
    return ln_modulate_with(modulate, x, shift, scale, eps, out_dtype)


def ln_modulate_with(modulate_fn, x, shift, scale, eps, out_dtype):
    """ln_modulate with `modulate_fn` as the modulation (a device's modulate provider)."""
    n = layer_norm(x, None, None, eps).to(x.dtype)
    return modulate_fn(_per_frame(n, shift.shape[1]), shift, scale, out_dtype).reshape(x.shape)


@define("residual_norm")
def residual_norm(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor | None, weight: torch.Tensor | None,
                  bias: torch.Tensor | None, shift: torch.Tensor | None, scale: torch.Tensor | None, eps: float,
                  round_input: bool, out_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """x, y: [B, L, C]; gate, shift, scale: fp32 [B|1, F, 1, C] or None; weight, bias: [C] or None.
    -> (r, h): r = fp32(x) + fp32(y) * gate (x + y without a gate), fp32 [B, L, C];
    n = layer_norm(r.to(out_dtype) if round_input else r, weight, bias) (fp32);
    h = modulate(n, shift, scale, out_dtype) with shift/scale, else n.to(out_dtype)."""
    return residual_norm_with(modulate, x, y, gate, weight, bias, shift, scale, eps, round_input, out_dtype)


def residual_norm_with(modulate_fn, x, y, gate, weight, bias, shift, scale, eps, round_input, out_dtype):
    """residual_norm with `modulate_fn` as the modulation (a device's modulate provider)."""
    if (shift is None) != (scale is None):
        raise ValueError("residual_norm: shift and scale come together")
    if gate is None:
        r = x.float() + y.float()
    else:
        r = gated_residual(_per_frame(x, gate.shape[1]), _per_frame(y, gate.shape[1]), gate).reshape(x.shape)
    n = layer_norm(r.to(out_dtype) if round_input else r, weight, bias, eps)
    if shift is None:
        return r, n.to(out_dtype)
    return r, modulate_fn(_per_frame(n, shift.shape[1]), shift, scale, out_dtype).reshape(x.shape)
