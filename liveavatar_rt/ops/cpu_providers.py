"""`cpu` providers: the C++ CPU kernels of `liveavatar_rt._C` (csrc/cpu/) for `rms_norm` and
`modulate` (both bit-identical to their references, see csrc/cpu/*.cpp for how), and for
`rolling_attention`, `rolling_attention_fp8` and `qk_norm_rope` (within tests/tolerances.py's
provider rule: another fp32 summation order; tests/ops/test_rolling_attention.py,
test_rolling_attention_fp8.py, test_qk_norm_rope.py).

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
from .kv_fp8 import E4M3, rolling_attention_fp8 as _rolling_attention_fp8_ref
from .modulate import modulate as _modulate_ref
from .norm import rms_norm as _rms_norm_ref
from .qk_norm_rope import qk_norm_rope as _qk_norm_rope_ref
from .rolling_attention import rolling_attention as _rolling_attention_ref
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


def _frames(t: torch.Tensor, nd: int, B: int, C: int, device_type: str = "cpu") -> Optional[torch.Tensor]:
    """shift/scale in the reference's broadcast form, as the kernel's [B|1, F, C] (a view), or
    None. For nd == 4 the reference form is per frame, [B|1, F|1, 1, C] against [B, F, S, C].
    `device_type`: where the kernel runs (cuda_providers.py shares this with the CUDA kernel)."""
    if t.dtype != torch.float32 or t.device.type != device_type or not 1 <= t.dim() <= nd or t.shape[-1] != C:
        return None
    if t.dim() != nd:  # each view op is a dispatcher round trip: only those needed
        t = t.reshape((1,) * (nd - t.dim()) + tuple(t.shape))
    if nd == 4:
        if t.shape[2] != 1:
            return None
        t = t.squeeze(2)
    if t.shape[0] not in (1, B):
        return None
    return t


def _per_frame_form(x: torch.Tensor, rows: tuple) -> bool:
    """The block's call form, which the C++ ops take directly: x [B, F, S, C] bf16|fp32 on CPU,
    each of `rows` fp32 [B|1, F|1, 1, C] on CPU. Checked with attribute reads only (no views)."""
    if x.dim() != 4 or x.dtype not in _DTYPES or x.device.type != "cpu":
        return False
    B, F, _, C = x.shape
    return all(t.dim() == 4 and t.dtype == torch.float32 and t.device.type == "cpu" and t.shape[3] == C
               and t.shape[2] == 1 and t.shape[1] in (1, F) and t.shape[0] in (1, B) for t in rows)


def modulate(x_norm: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """out = out_dtype(fp32(x_norm) * (1 + scale) + shift), as ops/modulate.py.

    Kernel forms: x_norm [B, L, C] with shift/scale [B|1, L|1, C] (per token / per sample), or
    x_norm [B, F, S, C] with shift/scale [B|1, F|1, 1, C] (per frame, as model/block.py calls
    it). Also accepted: 3-D shift/scale [B|1, F, C] with L % F == 0, the kernel's own per-frame
    form (an extension of the reference's broadcasting). Anything else runs the reference.
    """
    if out_dtype in _DTYPES and _per_frame_form(x_norm, (shift, scale)) and shift.shape == scale.shape:
        return torch.ops.liveavatar_rt.modulate.default(x_norm, shift, scale, out_dtype)  # taken as is
    return modulate_as_tokens(x_norm, shift, scale, out_dtype, "cpu")


def modulate_as_tokens(x_norm: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, out_dtype: torch.dtype,
                       device_type: str) -> torch.Tensor:
    """`modulate` through the kernel's [B, L, C] form with shift/scale [B|1, F, C] (a 4-D x_norm
    viewed as tokens), on `device_type` (the CPU and the CUDA provider); other forms run the
    reference."""
    nd = x_norm.dim()
    if (x_norm.dtype not in _DTYPES or out_dtype not in _DTYPES or x_norm.device.type != device_type
            or nd not in (3, 4)):
        return _modulate_ref(x_norm, shift, scale, out_dtype)
    B, C = x_norm.shape[0], x_norm.shape[-1]
    sh, sc = _frames(shift, nd, B, C, device_type), _frames(scale, nd, B, C, device_type)
    if sh is None or sc is None:
        return _modulate_ref(x_norm, shift, scale, out_dtype)
    n_frames = x_norm.shape[1]
    L = n_frames if nd == 3 else n_frames * x_norm.shape[2]
    F = max(sh.shape[1], sc.shape[1])
    frames_ok = all(f in (1, F) for f in (sh.shape[1], sc.shape[1])) and (nd == 3 or F in (1, n_frames))
    if F == 0 or L % F or not frames_ok:
        return _modulate_ref(x_norm, shift, scale, out_dtype)
    Bs = max(sh.shape[0], sc.shape[0])
    if sh.shape != sc.shape:
        sh, sc = sh.expand(Bs, F, C), sc.expand(Bs, F, C)
    x3 = x_norm if nd == 3 else x_norm.reshape(B, L, C)
    out = torch.ops.liveavatar_rt.modulate.default(x3, sh, sc, out_dtype)
    return out.view(x_norm.shape)


def rolling_attention_supports(device: torch.device, dtype: torch.dtype) -> Optional[str]:
    """`supports`, plus AVX-512: without it the kernel runs its portable loops, which measured
    ~8x slower than the reference (csrc/cpu/rolling_attention.cpp), so the reference stays."""
    why = supports(device, dtype)
    if why is None and torch.backends.cpu.get_cpu_capability() != "AVX512":
        return (f"CPU capability {torch.backends.cpu.get_cpu_capability()} has no AVX-512: the portable "
                "kernel is slower than the reference")
    return why


def _cpu_float(*ts: torch.Tensor, dtype: torch.dtype) -> bool:
    return all(t.device.type == "cpu" and t.dtype == dtype for t in ts)


def rolling_attention(q, ring_k, ring_v, valid, cond_k, cond_v, cond_cos, cond_sin):
    """See ops/rolling_attention.py. Kernel form: q/k/v 4-D CPU tensors of one dtype (bf16|fp32),
    fp32 cos/sin, at least one key; anything else runs the reference. The kernel runs this CPU's
    best instruction-set level (`torch.ops.liveavatar_rt.rolling_attention_best_isa()`): for bf16
    the AMX tile GEMMs where the CPU has AMX-BF16, else AVX512-BF16 dot products, else AVX-512
    (csrc/cpu/rolling_attention_kernels.h; tests/ops/test_rolling_attention.py checks each level)."""
    if (
        q.dtype not in _DTYPES
        or not _cpu_float(q, ring_k, ring_v, cond_k, cond_v, dtype=q.dtype)
        or not _cpu_float(cond_cos, cond_sin, dtype=torch.float32)
        or any(t.dim() != 4 for t in (q, ring_k, ring_v, cond_k, cond_v))
        or not 0 <= valid <= ring_k.shape[1]
        or valid + cond_k.shape[1] == 0
    ):
        return _rolling_attention_ref(q, ring_k, ring_v, valid, cond_k, cond_v, cond_cos, cond_sin)
    return torch.ops.liveavatar_rt.rolling_attention.default(q, ring_k, ring_v, valid, cond_k, cond_v,
                                                             cond_cos, cond_sin)


def rolling_attention_fp8(q, ring_k, ring_v, ring_ks, ring_vs, valid, cond_k, cond_v, cond_ks, cond_vs, cond_cos,
                          cond_sin):
    """See ops/kv_fp8.py. Kernel form: q bf16|fp32, K/V 4-D E4M3 and their scales fp32 [B, L, H]
    (K/V's own leading dims), fp32 cos/sin, all on CPU, at least one key; anything else runs
    the reference."""
    kv, scales = (ring_k, ring_v, cond_k, cond_v), (ring_ks, ring_vs, cond_ks, cond_vs)
    if (
        q.dtype not in _DTYPES
        or not _cpu_float(q, dtype=q.dtype)
        or not _cpu_float(*kv, dtype=E4M3)
        or not _cpu_float(*scales, dtype=torch.float32)
        or not _cpu_float(cond_cos, cond_sin, dtype=torch.float32)
        or q.dim() != 4 or any(t.dim() != 4 for t in kv)
        or any(s.shape != t.shape[:3] for s, t in zip(scales, kv))
        or not 0 <= valid <= ring_k.shape[1]
        or valid + cond_k.shape[1] == 0
    ):
        return _rolling_attention_fp8_ref(q, ring_k, ring_v, ring_ks, ring_vs, valid, cond_k, cond_v, cond_ks,
                                          cond_vs, cond_cos, cond_sin)
    return torch.ops.liveavatar_rt.rolling_attention_fp8.default(q, ring_k, ring_v, ring_ks, ring_vs, valid, cond_k,
                                                                 cond_v, cond_ks, cond_vs, cond_cos, cond_sin)


def qk_norm_rope(q, k, wq, wk, eps, cos, sin, num_heads, k_rot_out=None):
    """See ops/qk_norm_rope.py. `k_rot_out` (a ring slot view: q's dtype, contiguous last dim) is
    written in place by the kernel's out-variant. Other forms run the reference."""
    B, L, C = q.shape if q.dim() == 3 else (0, 0, 0)
    H = num_heads
    D = C // H if H > 0 else 0
    if (
        q.dim() != 3
        or q.dtype not in _DTYPES
        or not _cpu_float(q, k, dtype=q.dtype)
        or k.shape != q.shape
        or not _cpu_float(cos, sin, dtype=torch.float32)
        or H <= 0 or C % H or D % 2
        or any(w.device.type != "cpu" or not w.is_floating_point() or w.shape != (C,) for w in (wq, wk))
        or (k_rot_out is not None and (not _cpu_float(k_rot_out, dtype=q.dtype) or k_rot_out.shape != (B, L, H, D)
                                       or k_rot_out.stride(-1) != 1))
    ):
        return _qk_norm_rope_ref(q, k, wq, wk, eps, cos, sin, num_heads, k_rot_out)
    if k_rot_out is None:
        return torch.ops.liveavatar_rt.qk_norm_rope.default(q, k, wq, wk, eps, cos, sin, H)
    q_rot, k_normed = q.new_empty(B, L, H, D), q.new_empty(B, L, H, D)
    torch.ops.liveavatar_rt.qk_norm_rope_out.default(q_rot, k_rot_out, k_normed, q, k, wq, wk, eps, cos, sin)
    return q_rot, k_rot_out, k_normed


OPS["rms_norm"].register("cpu", rms_norm, priority=PRIORITY, supports=supports)
OPS["modulate"].register("cpu", modulate, priority=PRIORITY, supports=supports)
# Default on CPU because faster than the reference in our measurement (bench/test_ops_bench.py,
# 2-core AMD EPYC with AVX-512 BF16, speedup = ratio of minima in one run, 2 threads / 1 thread;
# rolling_attention only with AVX-512, see rolling_attention_supports):
# rolling_attention 14B-scaled (H=40, D=128, Lq=396, cap=1584, Lc=330) fp32 1.8x / 1.8x, bf16
# 2.4x / 2.1x; tiny fp32 2.9x / 1.6x, bf16 3.2x / 2.0x. qk_norm_rope 14B-scaled fp32 7.7x / 8.8x,
# bf16 4.8x / 4.7x; tiny 6-10x.
OPS["rolling_attention"].register("cpu", rolling_attention, priority=PRIORITY, supports=rolling_attention_supports)
# The same kernel with the rows dequantized as they are gathered: the same AVX-512 rule.
OPS["rolling_attention_fp8"].register("cpu", rolling_attention_fp8, priority=PRIORITY,
                                      supports=rolling_attention_supports)
OPS["qk_norm_rope"].register("cpu", qk_norm_rope, priority=PRIORITY, supports=supports)
