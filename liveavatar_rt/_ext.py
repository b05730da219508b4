"""Lazy loader of the compiled extension `liveavatar_rt._C` (csrc/, built by setup.py).

Nothing is loaded at import: the first `available()` / `load_error()` / `load()` call imports
`liveavatar_rt._C`, which registers the ops `torch.ops.liveavatar_rt.*` (schemas in
csrc/torch_bindings.cpp). A missing or broken build never raises: the package falls back to
its PyTorch references and the reason is kept for `liveavatar-rt info` (`load_error()`).

`LIVEAVATAR_RT_DISABLE_EXT=1` makes the loader refuse the extension even when it is built
(to run or test the pure-PyTorch path); it is read once, on the first load.
"""
from __future__ import annotations

import importlib
import threading
from typing import Optional

import torch

from . import envvars

DISABLE_ENV = envvars.DISABLE_EXT

_lock = threading.Lock()
_tried = False
_error: Optional[str] = None


def _register_fakes() -> None:
    """Shape-only implementations for FakeTensor / torch.compile / opcheck (symbolic shapes)."""

    @torch.library.register_fake("liveavatar_rt::rms_norm")
    def _rms_norm_fake(x, weight, eps):
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    @torch.library.register_fake("liveavatar_rt::rms_norm_out")
    def _rms_norm_out_fake(out, x, weight, eps):
        return None

    @torch.library.register_fake("liveavatar_rt::modulate")
    def _modulate_fake(x_norm, shift, scale, out_dtype):
        return x_norm.new_empty(x_norm.shape, dtype=out_dtype)

    @torch.library.register_fake("liveavatar_rt::modulate_out")
    def _modulate_out_fake(out, x_norm, shift, scale):
        return None

    @torch.library.register_fake("liveavatar_rt::gated_residual")
    def _gated_residual_fake(x, y, gate):
        return x.new_empty(x.shape, dtype=torch.float32)

    @torch.library.register_fake("liveavatar_rt::gated_residual_out")
    def _gated_residual_out_fake(out, x, y, gate):
        return None

    @torch.library.register_fake("liveavatar_rt::layer_norm")
    def _layer_norm_fake(x, weight, bias, eps):
        return x.new_empty(x.shape, dtype=torch.float32)

    @torch.library.register_fake("liveavatar_rt::ln_modulate")
    def _ln_modulate_fake(x, shift, scale, eps, out_dtype):
        return x.new_empty(x.shape, dtype=out_dtype)

    @torch.library.register_fake("liveavatar_rt::residual_norm")
    def _residual_norm_fake(x, y, gate, weight, bias, shift, scale, eps, round_input, out_dtype):
        return x.new_empty(x.shape, dtype=torch.float32), x.new_empty(x.shape, dtype=out_dtype)

    @torch.library.register_fake("liveavatar_rt::gelu_tanh")
    def _gelu_tanh_fake(x):
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    @torch.library.register_fake("liveavatar_rt::rolling_attention")
    def _rolling_attention_fake(q, ring_k, ring_v, valid, cond_k, cond_v, cond_cos, cond_sin):
        return torch.empty_like(q, memory_format=torch.contiguous_format)

    # the test entry points with an explicit instruction-set level: same shapes as the ops
    @torch.library.register_fake("liveavatar_rt::rolling_attention_isa")
    def _rolling_attention_isa_fake(q, ring_k, ring_v, valid, cond_k, cond_v, cond_cos, cond_sin, isa):
        return torch.empty_like(q, memory_format=torch.contiguous_format)

    @torch.library.register_fake("liveavatar_rt::rolling_attention_fp8_isa")
    def _rolling_attention_fp8_isa_fake(q, ring_k, ring_v, ring_ks, ring_vs, valid, cond_k, cond_v, cond_ks, cond_vs,
                                        cond_cos, cond_sin, isa):
        return torch.empty_like(q, memory_format=torch.contiguous_format)

    @torch.library.register_fake("liveavatar_rt::rolling_attention_fp8")
    def _rolling_attention_fp8_fake(q, ring_k, ring_v, ring_ks, ring_vs, valid, cond_k, cond_v, cond_ks, cond_vs,
                                    cond_cos, cond_sin):
        return torch.empty_like(q, memory_format=torch.contiguous_format)

    @torch.library.register_fake("liveavatar_rt::qk_norm_rope")
    def _qk_norm_rope_fake(q, k, wq, wk, eps, cos, sin, num_heads):
        B, L, C = q.shape
        shape = (B, L, num_heads, C // num_heads)
        return q.new_empty(shape), q.new_empty(shape), q.new_empty(shape)

    @torch.library.register_fake("liveavatar_rt::qk_norm_rope_out")
    def _qk_norm_rope_out_fake(q_rot, k_rot, k_normed, q, k, wq, wk, eps, cos, sin):
        return None


def load() -> bool:
    """Import `liveavatar_rt._C` once; True when its ops are registered. Never raises."""
    global _tried, _error
    with _lock:
        if _tried:
            return _error is None
        _tried = True
        disabled = envvars.disable_ext()
        if disabled is not None:
            _error = f"disabled by {DISABLE_ENV}={disabled}"
            return False
        try:
            importlib.import_module("liveavatar_rt._C")
            _register_fakes()
        except Exception as exc:  # ImportError (not built), OSError / undefined symbol (ABI mismatch), ...
            _error = f"{type(exc).__name__}: {exc}"
            return False
        return True


def available() -> bool:
    """True when the compiled ops can be used (loads the extension on first call)."""
    return load()


def load_error() -> Optional[str]:
    """Why the extension is unavailable (None when it loaded); loads it on first call."""
    load()
    return _error
