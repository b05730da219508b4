"""`cpu` providers of the block's norm chains (ops/block_norms.py): csrc/cpu/residual_norm.cpp,
the chain of the `cpu` layer_norm, modulate and gated_residual kernels in one pass per row, bit
for bit (tests/ops/test_block_norms.py), so the medium preset's fp32 [B*L, C] intermediates no
longer travel through memory between them. Forms the kernel does not take run the reference."""
from __future__ import annotations

import torch

from .block_norms import ln_modulate as _ln_modulate_ref, residual_norm as _residual_norm_ref
from .cpu_providers import PRIORITY, _DTYPES, supports
from .registry import OPS


def _tokens(x: torch.Tensor) -> bool:
    return x.dim() == 3 and x.dtype in _DTYPES and x.device.type == "cpu"


def _frames(x: torch.Tensor, *rows: torch.Tensor | None) -> bool:
    """Each present row tensor is fp32 per-frame rows [B|1, F, 1, C] on CPU of x [B, L, C], all with
    one F that divides L (the kernel's form)."""
    present = [t for t in rows if t is not None]
    B, L, C = x.shape
    return (all(t.dim() == 4 and t.dtype == torch.float32 and t.device.type == "cpu" and t.shape[0] in (1, B)
                and t.shape[2] == 1 and t.shape[3] == C and t.shape[1] > 0 and L % t.shape[1] == 0 for t in present)
            and len({t.shape[1] for t in present}) <= 1)


def _affine(t: torch.Tensor | None, C: int) -> bool:
    return t is None or (t.shape == (C,) and t.is_floating_point() and t.device.type == "cpu")


def ln_modulate(x, shift, scale, eps: float, out_dtype: torch.dtype) -> torch.Tensor:
    """As ops/block_norms.py; kernel form: x [B, L, C] bf16|fp32, per-frame fp32 shift/scale."""
    if not (_tokens(x) and out_dtype in _DTYPES and _frames(x, shift, scale)):
        return _ln_modulate_ref(x, shift, scale, eps, out_dtype)
    return torch.ops.liveavatar_rt.ln_modulate.default(x, shift, scale, eps, out_dtype)


def residual_norm(x, y, gate, weight, bias, shift, scale, eps: float, round_input: bool, out_dtype: torch.dtype):
    """As ops/block_norms.py; kernel form: x, y [B, L, C] bf16|fp32 of one shape, per-frame fp32
    gate/shift/scale (one frame count), weight/bias floating [C]."""
    if not (_tokens(x) and _tokens(y) and x.shape == y.shape and out_dtype in _DTYPES
            and (shift is None) == (scale is None) and _frames(x, gate, shift, scale)
            and _affine(weight, x.shape[-1]) and _affine(bias, x.shape[-1])):
        return _residual_norm_ref(x, y, gate, weight, bias, shift, scale, eps, round_input, out_dtype)
    return torch.ops.liveavatar_rt.residual_norm.default(x, y, gate, weight, bias, shift, scale, eps, round_input,
                                                          out_dtype)


OPS["ln_modulate"].register("cpu", ln_modulate, priority=PRIORITY, supports=supports)
OPS["residual_norm"].register("cpu", residual_norm, priority=PRIORITY, supports=supports)
