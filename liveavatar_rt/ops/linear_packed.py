"""`linear` provider `onednn_packed`: bf16 GEMMs on CPU with weights pre-packed once for oneDNN.

Why: `F.linear` hands oneDNN a plain [out, in] weight, and oneDNN reorders it into its blocked
(AMX / AVX512-BF16 tile) layout on every call. At the DiT's shapes (a block is 192-3168 tokens,
weights 0.5-50 MB) that reorder is a cold read + write of the whole weight per call: measured on
an AMX machine, 1 thread, 192x512x1536 bf16: 568 GFLOP/s cycling 40 weights through plain
F.linear vs 866 GFLOP/s with the weights packed beforehand (hot, one weight: 752 vs 1097).

What: the first call with a weight packs it (`torch.ops.mkldnn._reorder_linear_weight`) and keeps
the packed copy, keyed by the weight tensor's identity and its in-place version counter (a weight
changed in place, e.g. by a LoRA merge, is packed again); later calls run
`torch.ops.mkldnn._linear_pointwise` on it. Same oneDNN kernel as `native`, same result bit for
bit (tested). The layers the published model runs in fp32 (time embedding and projection, audio
encoder: `dtype=float32` calls on bf16 weights) keep an fp32 copy of their weight the same way,
instead of converting it on every call (~38 MB of conversions per block at the medium size).
Calls that need gradients (training) run the native GEMM. Cost: a second copy of every weight
this provider has seen (CPU memory).
"""
from __future__ import annotations

import threading
import weakref
from typing import Optional

import torch
import torch.nn.functional as F

from .linear import _cast, _native_linear, linear
from .registry import OPS

_lock = threading.Lock()
# (id(weight or the tensor it views), shape, stride, offset, form) -> (weakref to that tensor,
# the weight's _version when made, the derived weight)
_cache: dict[tuple, tuple[weakref.ref, int, torch.Tensor]] = {}
_FORMS = {"packed": lambda w: torch.ops.mkldnn._reorder_linear_weight(w),  # oneDNN blocked bf16
          "fp32": lambda w: w.float()}


def _forget(key: tuple) -> None:
    with _lock:
        _cache.pop(key, None)


def derived_weight(weight: torch.Tensor, form: str) -> torch.Tensor:
    """`weight` in `form` ('packed': oneDNN-packed bf16; 'fp32'), made on first use and kept
    while the weight lives and is not modified in place."""
    # a view made per call (patch_conv's weight.reshape) is keyed by the tensor it views, so it
    # hits the cache; views share their base's version counter
    owner = weight._base if weight._base is not None else weight
    key = (id(owner), tuple(weight.shape), weight.stride(), weight.storage_offset(), form)
    entry = _cache.get(key)
    if entry is not None and entry[0]() is owner and entry[1] == weight._version:
        return entry[2]
    derived = _FORMS[form](weight.detach())
    with _lock:
        _cache[key] = (weakref.ref(owner, lambda _, k=key: _forget(k)), weight._version, derived)
    return derived


def cached_weights() -> int:
    """How many derived weights are held (tests, memory accounting)."""
    return len(_cache)


def _needs_grad(*ts) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in ts)


def _packed_linear(x, weight, bias, dtype):
    # training (gradients needed) and anything but bf16 2-D CPU weights: the native GEMM / reference
    if (weight.dtype != torch.bfloat16 or weight.dim() != 2 or x.device.type != "cpu" or weight.device.type != "cpu"
            or _needs_grad(x, weight, bias)):
        return _native_linear(x, weight, bias, dtype) if dtype == torch.bfloat16 else linear(x, weight, bias, dtype)
    if dtype == torch.float32:  # the reference's fp32 rule, with the weight converted once
        return F.linear(_cast(x, dtype), derived_weight(weight, "fp32"), None if bias is None else _cast(bias, dtype))
    if dtype != torch.bfloat16:
        return _native_linear(x, weight, bias, dtype)
    b = None if bias is None else _cast(bias, dtype)
    if torch.compiler.is_compiling():  # an opaque call in a compiled graph (inductor cannot lower it)
        return _packed_linear_op(_cast(x, dtype), weight, b)
    return torch.ops.mkldnn._linear_pointwise(_cast(x, dtype), derived_weight(weight, "packed"), b, "none", [], "")


@torch.library.custom_op("liveavatar_rt_py::packed_linear", mutates_args=())
def _packed_linear_op(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """bf16 x [..., in] @ packed(weight [out, in])^T + bias -> [..., out] bf16 (compile=True path)."""
    return torch.ops.mkldnn._linear_pointwise(x, derived_weight(weight, "packed"), bias, "none", [], "")


@_packed_linear_op.register_fake
def _(x, weight, bias):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


def _supports(device: torch.device, dtype: torch.dtype) -> Optional[str]:
    if torch.device(device).type != "cpu":
        return f"device {torch.device(device)} is not CPU (oneDNN weight packing is a CPU path)"
    if dtype != torch.bfloat16:
        return f"packs bf16 weights only, not {dtype}"
    if not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        return "this torch has no oneDNN (mkldnn) linear with packed weights"
    return None


# differentiable: a call that needs gradients takes the native (differentiable) GEMM above
OPS["linear"].register("onednn_packed", _packed_linear, priority=7, supports=_supports, differentiable=True)
