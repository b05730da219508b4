"""`cpu` providers: the C++ CPU kernels of `liveavatar_rt._C` (csrc/cpu/) for `rms_norm` and
`modulate`. Both are bit-identical to their references (see csrc/cpu/*.cpp for how).

`supports(device, dtype)` refuses, with the reason, when the extension is not built or was
refused (`liveavatar_rt._ext.load_error()`), off CPU, or outside bf16/fp32. The extension is
loaded by the first `supports` call (when an `OpTable` is resolved), never at import.

Call-time inputs the kernels do not take (e.g. a broadcast pattern other than per token /
frame / sample, non-fp32 shift) go to the reference, so a provider never changes a result.
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import _ext
from .modulate import modulate as _modulate_ref
from .norm import rms_norm as _rms_norm_ref
from .registry import OPS

PRIORITY = 10
_DTYPES = (torch.float32, torch.bfloat16)


def supports(device: torch.device, dtype: torch.dtype) -> Optional[str]:
    if not _ext.available():
        return f"liveavatar_rt._C not built: {_ext.load_error()}"
    if torch.device(device).type != "cpu":
        return f"device {torch.device(device)} is not CPU"
    if dtype not in _DTYPES:
        return f"dtype {dtype} is not bf16/fp32"
    return None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x: [..., C] bf16|fp32, weight: [C] -> [..., C] in x's dtype (see ops/norm.py)."""
    if (
        x.dtype not in _DTYPES
        or x.dim() == 0
        or weight.dim() != 1
        or weight.shape[0] != x.shape[-1]
        or not weight.is_floating_point()
        or x.device.type != "cpu"
        or weight.device.type != "cpu"
    ):
        return _rms_norm_ref(x, weight, eps)
    return torch.ops.liveavatar_rt.rms_norm.default(x, weight, eps)


def _frames(t: torch.Tensor, nd: int, B: int, C: int) -> Optional[torch.Tensor]:
    """shift/scale in the reference's broadcast form, as the kernel's [B|1, F, C] (a view), or
    None. For nd == 4 the reference form is per frame, [B|1, F|1, 1, C] against [B, F, S, C]."""
    if t.dtype != torch.float32 or t.device.type != "cpu" or not 1 <= t.dim() <= nd or t.shape[-1] != C:
        return None
    t = t.reshape((1,) * (nd - t.dim()) + tuple(t.shape))
    if nd == 4:
        if t.shape[2] != 1:
            return None
        t = t.squeeze(2)
    if t.shape[0] not in (1, B):
        return None
    return t


def modulate(x_norm: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """out = out_dtype(fp32(x_norm) * (1 + scale) + shift), as ops/modulate.py.

    Kernel forms: x_norm [B, L, C] with shift/scale [B|1, L|1, C] (per token / per sample), or
    x_norm [B, F, S, C] with shift/scale [B|1, F|1, 1, C] (per frame, as model/block.py calls
    it). Also accepted: 3-D shift/scale [B|1, F, C] with L % F == 0, the kernel's own per-frame
    form (an extension of the reference's broadcasting). Anything else runs the reference.
    """
    nd = x_norm.dim()
    if x_norm.dtype not in _DTYPES or out_dtype not in _DTYPES or x_norm.device.type != "cpu" or nd not in (3, 4):
        return _modulate_ref(x_norm, shift, scale, out_dtype)
    B, C = x_norm.shape[0], x_norm.shape[-1]
    sh, sc = _frames(shift, nd, B, C), _frames(scale, nd, B, C)
    if sh is None or sc is None:
        return _modulate_ref(x_norm, shift, scale, out_dtype)
    n_frames = x_norm.shape[1]
    L = n_frames if nd == 3 else n_frames * x_norm.shape[2]
    F = max(sh.shape[1], sc.shape[1])
    frames_ok = all(f in (1, F) for f in (sh.shape[1], sc.shape[1])) and (nd == 3 or F in (1, n_frames))
    if F == 0 or L % F or not frames_ok:
        return _modulate_ref(x_norm, shift, scale, out_dtype)
    Bs = max(sh.shape[0], sc.shape[0])
    sh, sc = sh.expand(Bs, F, C), sc.expand(Bs, F, C)
    x3 = x_norm.reshape(B, L, C)
    out = torch.ops.liveavatar_rt.modulate.default(x3, sh, sc, out_dtype)
    return out.view(x_norm.shape)


OPS["rms_norm"].register("cpu", rms_norm, priority=PRIORITY, supports=supports)
OPS["modulate"].register("cpu", modulate, priority=PRIORITY, supports=supports)
