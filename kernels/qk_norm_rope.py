"""Triton qk_norm_rope: RMSNorm of q and k over the full width C, then RoPE per head.

Same meaning as liveavatar_rt/ops/qk_norm_rope.py. One program per (token, q or k) loads the
row as even / odd halves (the interleaved RoPE pairs), takes the fp32 statistic over both,
rounds as the reference does (normed value to the input dtype, times the weight rounded to the
input dtype, rounded again), and rotates in fp32 (the reference rotates in float64: the two
differ by at most one fp32 rounding, far below the input dtype's). Writes q_rot, k_rot (any
[B, L, H, D] view with a contiguous last dim, e.g. a ring-cache slot) and k_normed.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from .common import _round_as


@triton.jit
def _qk_norm_rope_fwd_kernel(
    Q, K, WQ, WK, COS, SIN, QROT, KROT, KNORM,
    sqb, sql, skb, skl, sqrb, sqrl, sqrh, skrb, skrl, skrh, snb, snl, snh,
    L, EPS,
    C: tl.constexpr, HALF: tl.constexpr, BLOCK_P: tl.constexpr,
):
    row = tl.program_id(0)
    is_k = tl.program_id(1) == 1
    b = row // L
    l = row % L
    offs = tl.arange(0, BLOCK_P)  # pair index over the whole row: dims 2p, 2p + 1
    mask = offs < C // 2
    if is_k:
        x_ptr = K + b * skb + l * skl
        w_ptr = WK
    else:
        x_ptr = Q + b * sqb + l * sql
        w_ptr = WQ
    x_e = tl.load(x_ptr + 2 * offs, mask=mask, other=0.0)
    x_o = tl.load(x_ptr + 2 * offs + 1, mask=mask, other=0.0)
    dtype = x_e.dtype
    xf_e, xf_o = x_e.to(tl.float32), x_o.to(tl.float32)
    inv = 1.0 / tl.sqrt(tl.sum(xf_e * xf_e + xf_o * xf_o, 0) / C + EPS)
    w_e = tl.load(w_ptr + 2 * offs, mask=mask, other=0.0).to(tl.float32)
    w_o = tl.load(w_ptr + 2 * offs + 1, mask=mask, other=0.0).to(tl.float32)
    n_e = _round_as(_round_as(xf_e * inv, dtype) * w_e, dtype)
    n_o = _round_as(_round_as(xf_o * inv, dtype) * w_o, dtype)
    head = offs // HALF
    i = offs % HALF
    cos = tl.load(COS + l * HALF + i, mask=mask, other=0.0)
    sin = tl.load(SIN + l * HALF + i, mask=mask, other=0.0)
    r_e = _round_as(n_e * cos - n_o * sin, dtype).to(dtype)  # exact casts: values already rounded
    r_o = _round_as(n_e * sin + n_o * cos, dtype).to(dtype)
    if is_k:
        kn_ptr = KNORM + b * snb + l * snl + head * snh + 2 * i
        tl.store(kn_ptr, n_e.to(dtype), mask=mask)
        tl.store(kn_ptr + 1, n_o.to(dtype), mask=mask)
        o_ptr = KROT + b * skrb + l * skrl + head * skrh + 2 * i
    else:
        o_ptr = QROT + b * sqrb + l * sqrl + head * sqrh + 2 * i
    tl.store(o_ptr, r_e, mask=mask)
    tl.store(o_ptr + 1, r_o, mask=mask)


def qk_norm_rope_fwd(q: torch.Tensor, k: torch.Tensor, wq: torch.Tensor, wk: torch.Tensor, eps: float,
                     cos: torch.Tensor, sin: torch.Tensor, num_heads: int,
                     k_rot_out: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k: [B, L, C] (one dtype); wq, wk: [C]; cos, sin: fp32 [L, D/2] -> (q_rot, k_rot,
    k_normed), each [B, L, H, D]; k_rot is `k_rot_out` when given (q's dtype, last dim
    contiguous, any other strides). CPU tensors need TRITON_INTERPRET=1."""
    B, L, C = q.shape
    H, D = num_heads, C // num_heads
    if k.shape != q.shape or k.dtype != q.dtype or C % H or D % 2:
        raise ValueError(f"qk_norm_rope_fwd: q {tuple(q.shape)} / k {tuple(k.shape)} must match and split "
                         f"into {H} even heads")
    q, k = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k))
    wq, wk = (w.to(q.dtype).contiguous() for w in (wq, wk))  # the reference multiplies by weight.to(x.dtype)
    cos, sin = cos.float().contiguous(), sin.float().contiguous()
    q_rot = torch.empty(B, L, H, D, dtype=q.dtype, device=q.device)
    k_normed = torch.empty_like(q_rot)
    k_rot = torch.empty_like(q_rot) if k_rot_out is None else k_rot_out
    if k_rot.shape != q_rot.shape or k_rot.dtype != q.dtype or k_rot.stride(-1) != 1:
        raise ValueError(f"qk_norm_rope_fwd: k_rot_out must be {tuple(q_rot.shape)} {q.dtype} "
                         "with a contiguous last dim")
    if q.numel() == 0:
        return q_rot, k_rot, k_normed
    _qk_norm_rope_fwd_kernel[(B * L, 2)](
        q, k, wq, wk, cos, sin, q_rot, k_rot, k_normed,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1),
        q_rot.stride(0), q_rot.stride(1), q_rot.stride(2), k_rot.stride(0), k_rot.stride(1), k_rot.stride(2),
        k_normed.stride(0), k_normed.stride(1), k_normed.stride(2),
        L, eps, C=C, HALF=D // 2, BLOCK_P=triton.next_power_of_2(C // 2),
        num_warps=8 if C >= 4096 else 4,  # one program holds a whole row (C = 5120 at 14B)
    )
    return q_rot, k_rot, k_normed
