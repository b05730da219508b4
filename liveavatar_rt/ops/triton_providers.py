"""`triton` providers: the Triton kernels of `liveavatar_rt.kernels` (top-level kernels/) for
`rolling_attention` (also over an FP8 cache, `rolling_attention_fp8`) and `qk_norm_rope`.

Nothing is imported or probed at import time: `supports` checks the device first and only then
whether Triton is installed (a spec lookup, no import); the kernel module is imported by the
first call. On CPU the provider refuses (the kernels are tested there by calling the launchers
under TRITON_INTERPRET=1, tests/ops/), so the CPU default is never an interpreted kernel.
"""
from __future__ import annotations

import importlib.util
from typing import Optional

import torch

from . import kv_fp8 as _kv_fp8, qk_norm_rope as _qk_norm_rope  # noqa: F401  (define the ops)
from . import rolling_attention as _rolling_attention  # noqa: F401
from .registry import OPS

PRIORITY = 20  # above the C++ CPU providers; the two never support the same device
CPU_REFUSAL = "Triton kernels need a CUDA device; tested on CPU with TRITON_INTERPRET=1"
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _triton_installed() -> bool:
    try:
        return importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):  # a stubbed or half-imported `triton` in sys.modules
        return False


def supports(device: torch.device, dtype: torch.dtype) -> Optional[str]:
    device = torch.device(device)
    if device.type != "cuda":
        return CPU_REFUSAL
    if not _triton_installed():
        return "triton is not installed (pip install liveavatar_rt[gpu])"
    if dtype not in _DTYPES:
        return f"dtype {dtype} is not fp32/fp16/bf16"
    return None


def rolling_attention(q, ring_k, ring_v, valid, cond_k, cond_v, cond_cos, cond_sin):
    """See ops/rolling_attention.py; kernels/rolling_attention.py."""
    from ..kernels.rolling_attention import rolling_attention_fwd

    return rolling_attention_fwd(q, ring_k, ring_v, valid, cond_k, cond_v, cond_cos, cond_sin)


def rolling_attention_fp8(q, ring_k, ring_v, ring_ks, ring_vs, valid, cond_k, cond_v, cond_ks, cond_vs, cond_cos,
                          cond_sin):
    """See ops/kv_fp8.py; kernels/rolling_attention.py (dequantizes inside its loads)."""
    from ..kernels.rolling_attention import rolling_attention_fp8_fwd

    return rolling_attention_fp8_fwd(q, ring_k, ring_v, ring_ks, ring_vs, valid, cond_k, cond_v, cond_ks, cond_vs,
                                     cond_cos, cond_sin)


def qk_norm_rope(q, k, wq, wk, eps, cos, sin, num_heads, k_rot_out=None):
    """See ops/qk_norm_rope.py; kernels/qk_norm_rope.py (writes k_rot_out in place)."""
    from ..kernels.qk_norm_rope import qk_norm_rope_fwd

    return qk_norm_rope_fwd(q, k, wq, wk, eps, cos, sin, num_heads, k_rot_out)


OPS["rolling_attention"].register("triton", rolling_attention, priority=PRIORITY, supports=supports)
OPS["rolling_attention_fp8"].register("triton", rolling_attention_fp8, priority=PRIORITY, supports=supports)
OPS["qk_norm_rope"].register("triton", qk_norm_rope, priority=PRIORITY, supports=supports)
