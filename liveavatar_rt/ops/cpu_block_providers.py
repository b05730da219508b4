"""`cpu` providers for the rest of a transformer block's small ops (C++ kernels of
`liveavatar_rt._C`, csrc/cpu/): `gated_residual` (bit-identical), `layer_norm` (within the
provider rule: two-pass fp32 statistics instead of torch's Welford), `gelu_tanh` (one exp
instead of torch's tanh, within the rule) and `attention` (the rolling_attention kernel with no
conditioning keys: fp32 online softmax, within the rule).

At the tiny preset's sizes ([192, 128] rows) each reference is several small torch ops plus
fp32 copies of bf16 inputs, and their fixed costs dominate the block time; each kernel is one
pass. Call-time forms the kernels do not take run the reference, so a provider never changes
what a call means. `supports` as in cpu_providers.py (extension built, CPU, bf16/fp32).
"""
from __future__ import annotations

import torch

from .activation import gelu_tanh as _gelu_tanh_ref
from .attention import attention as _attention_ref
from .cpu_providers import PRIORITY, _DTYPES, _frames, _per_frame_form, rolling_attention_supports, supports
from .modulate import gated_residual as _gated_residual_ref
from .norm import layer_norm as _layer_norm_ref
from .registry import OPS


def gated_residual(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """fp32(x) + fp32(y) * gate, as ops/modulate.py. Kernel forms: x, y of one shape, [B, L, C]
    with gate [B|1, L|F|1, C], or [B, F, S, C] (model/block.py's per-frame view) with gate
    [B|1, F|1, 1, C]; bf16/fp32 x and y, fp32 gate. -> fp32, x's shape."""
    nd = x.dim()
    if _per_frame_form(x, (gate,)) and y.shape == x.shape and y.dtype in _DTYPES and y.device.type == "cpu":
        return torch.ops.liveavatar_rt.gated_residual.default(x, y, gate)  # the kernel takes it as is
    if (
        nd not in (3, 4)
        or x.shape != y.shape
        or x.dtype not in _DTYPES or y.dtype not in _DTYPES
        or x.device.type != "cpu" or y.device.type != "cpu"
    ):
        return _gated_residual_ref(x, y, gate)
    B, C = x.shape[0], x.shape[-1]
    g = _frames(gate, nd, B, C)
    if g is None:
        return _gated_residual_ref(x, y, gate)
    L = x.shape[1] if nd == 3 else x.shape[1] * x.shape[2]
    F = g.shape[1]
    if F == 0 or L % F or (nd == 4 and F not in (1, x.shape[1])):
        return _gated_residual_ref(x, y, gate)
    if nd == 3:
        return torch.ops.liveavatar_rt.gated_residual.default(x, y, g)
    out = torch.ops.liveavatar_rt.gated_residual.default(x.reshape(B, L, C), y.reshape(B, L, C), g)
    return out.view(x.shape)


def layer_norm(x: torch.Tensor, weight, bias, eps: float) -> torch.Tensor:
    """As ops/norm.py: x [..., C] bf16|fp32 -> fp32; weight/bias absent or floating [C]."""
    C = x.shape[-1] if x.dim() else 0
    if (
        x.dim() == 0
        or x.dtype not in _DTYPES
        or x.device.type != "cpu"
        or any(t is not None and (t.shape != (C,) or not t.is_floating_point() or t.device.type != "cpu")
               for t in (weight, bias))
    ):
        return _layer_norm_ref(x, weight, bias, eps)
    return torch.ops.liveavatar_rt.layer_norm.default(x, weight, bias, eps)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """As ops/attention.py: q [B, Lq, H, D], k, v [B, Lk, H, D] of one dtype (bf16|fp32, CPU),
    even D, Lk >= 1 -> [B, Lq, H, D] in q's dtype. The rolling_attention kernel with the keys as
    its ring (all `Lk` valid) and an empty conditioning part."""
    if (
        q.dim() != 4 or k.dim() != 4 or v.dim() != 4
        or q.dtype not in _DTYPES
        or any(t.dtype != q.dtype or t.device.type != "cpu" for t in (q, k, v))
        or k.shape != v.shape
        or k.shape[0] != q.shape[0] or k.shape[2:] != q.shape[2:]
        or q.shape[-1] % 2
        or k.shape[1] == 0
    ):
        return _attention_ref(q, k, v)
    B, _, H, D = q.shape
    empty, table = _no_cond(B, H, D, q.dtype)
    return torch.ops.liveavatar_rt.rolling_attention.default(q, k, v, k.shape[1], empty, empty, table, table)


_NO_COND: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def _no_cond(B: int, H: int, D: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Empty conditioning keys [B, 0, H, D] and tables [0, D/2], made once per form (they hold
    no data, so sharing them is safe)."""
    key = (B, H, D, dtype)
    hit = _NO_COND.get(key)
    if hit is None:
        if len(_NO_COND) > 64:
            _NO_COND.clear()
        hit = _NO_COND[key] = (torch.empty(B, 0, H, D, dtype=dtype), torch.empty(0, D // 2))
    return hit


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """As ops/activation.py: x bf16|fp32 on CPU -> x's dtype; other dtypes run the reference."""
    if x.dtype not in _DTYPES or x.device.type != "cpu":
        return _gelu_tanh_ref(x)
    return torch.ops.liveavatar_rt.gelu_tanh.default(x)


OPS["gated_residual"].register("cpu", gated_residual, priority=PRIORITY, supports=supports)
OPS["layer_norm"].register("cpu", layer_norm, priority=PRIORITY, supports=supports)
OPS["gelu_tanh"].register("cpu", gelu_tanh, priority=PRIORITY, supports=supports)
# Same AVX-512 condition as rolling_attention (the portable kernel is slower than the reference).
OPS["attention"].register("cpu", attention, priority=PRIORITY, supports=rolling_attention_supports)
