"""Triton rolling attention: one streaming block's queries over [ring[:valid] ; rope(cond_k)].

Same meaning as liveavatar_rt/ops/rolling_attention.py. One program per (query block, batch x
head) runs an online softmax (fp32, base 2) over the ring keys, then over the conditioning keys,
which it rotates on the fly after loading them: no concatenation, no rotated copy in memory.

Heads are handled as even / odd halves ([*, D/2] tiles of the interleaved RoPE pairs), so the
rotation is elementwise and q.k = q_even.k_even + q_odd.k_odd: two dots, no shuffles. The
rotated conditioning keys are rounded to the input dtype, as the reference stores them.
Precision: q.k in the input dtype with fp32 accumulation (fp32 inputs: IEEE, not TF32); P V
with P split into hi + lo halves of the value dtype, so P keeps ~16 bits (plain P in bf16 would
exceed the provider tolerance on peaked attention). Under the interpreter (CPU tensors) loads
are cast to fp32 first: its bf16 dot is wrong.

FP8 (`rolling_attention_fp8`, liveavatar_rt/ops/kv_fp8.py): K/V arrive as E4M3 bytes with one
fp32 scale per (batch, token, head); each loaded tile is decoded by bit arithmetic, times its
token's scale (one fp32 product) and rounded to q's dtype, i.e. the very values dequantize_kv
gives, after which the math above runs unchanged.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import _round_as

LOG2E = 1.4426950408889634


@triton.jit
def _e4m3_to_f32(x):
    """E4M3 codes (uint8) -> fp32, exactly: sign, 4 exponent bits (bias 7), 3 mantissa bits.
    Normal codes by re-biasing the bit fields into fp32's (exponent + 120, mantissa << 20);
    exponent 0 is subnormal, m * 2^-9; S.1111.111 is NaN. No exp2 (approximate on GPU)."""
    c = x.to(tl.uint32)
    e = (c >> 3) & 15
    m = c & 7
    normal = (((e + 120) << 23) | (m << 20)).to(tl.float32, bitcast=True)
    mag = tl.where(e == 0, m.to(tl.float32) * 0.001953125, normal)
    mag = tl.where((c & 0x7F) == 0x7F, float("nan"), mag)
    return tl.where((c & 0x80) != 0, -mag, mag)


@triton.jit
def _dequant(x, scale, DTYPE: tl.constexpr):
    """E4M3 codes times their (broadcast) fp32 scale, rounded once to DTYPE, as dequantize_kv."""
    return _round_as(_e4m3_to_f32(x) * scale, DTYPE).to(DTYPE)


@triton.jit
def _rolling_attention_fwd_kernel(
    Q, RK, RV, CK, CV, COS, SIN, OUT,
    sqb, sql, sqh, srkb, srkl, srkh, srvb, srvl, srvh,
    sckb, sckl, sckh, scvb, scvl, scvh, sob, sol, soh,
    H, LQ, VALID, LC, SCALE_LOG2E,
    RKS, RVS, CKS, CVS,  # FP8: fp32 scales [B, L, H] of RK, RV, CK, CV (else unused)
    srksb, srksl, srksh, srvsb, srvsl, srvsh, scksb, scksl, scksh, scvsb, scvsl, scvsh,
    HALF: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_H: tl.constexpr,
    UPCAST: tl.constexpr, SPLIT_P: tl.constexpr, PRECISION: tl.constexpr, FP8: tl.constexpr,
):
    pid_m = tl.program_id(0)
    b = tl.program_id(1) // H
    h = tl.program_id(1) % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_i = tl.arange(0, BLOCK_H)  # RoPE pair index: dims 2i, 2i + 1
    mask_m = offs_m < LQ
    mask_i = offs_i < HALF
    qmask = mask_m[:, None] & mask_i[None, :]
    q_ptr = Q + b * sqb + h * sqh + offs_m[:, None] * sql + 2 * offs_i[None, :]
    q_e = tl.load(q_ptr, mask=qmask, other=0.0)
    q_o = tl.load(q_ptr + 1, mask=qmask, other=0.0)
    if UPCAST:
        q_e, q_o = q_e.to(tl.float32), q_o.to(tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc_e = tl.zeros([BLOCK_M, BLOCK_H], tl.float32)
    acc_o = tl.zeros([BLOCK_M, BLOCK_H], tl.float32)
    # Keys [0, VALID) come from the ring, [VALID, VALID + LC) from the conditioning cache.
    for start in range(0, VALID + LC, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        is_ring = offs_n < VALID
        is_cond = (offs_n >= VALID) & (offs_n < VALID + LC)
        c_n = tl.where(is_cond, offs_n - VALID, 0)
        kmask_r = mask_i[:, None] & is_ring[None, :]
        kmask_c = mask_i[:, None] & is_cond[None, :]
        # K^T tiles [BLOCK_H, BLOCK_N]: ring keys as stored, conditioning keys rotated.
        rk_ptr = RK + b * srkb + h * srkh + offs_n[None, :] * srkl + 2 * offs_i[:, None]
        ck_ptr = CK + b * sckb + h * sckh + c_n[None, :] * sckl + 2 * offs_i[:, None]
        if FP8:  # E4M3 bytes dequantized to q's dtype with their token's scale
            kdt = Q.dtype.element_ty
            rks = tl.load(RKS + b * srksb + h * srksh + offs_n * srksl, mask=is_ring, other=0.0)[None, :]
            cks = tl.load(CKS + b * scksb + h * scksh + c_n * scksl, mask=is_cond, other=0.0)[None, :]
            rk_e = _dequant(tl.load(rk_ptr, mask=kmask_r, other=0), rks, kdt)
            rk_o = _dequant(tl.load(rk_ptr + 1, mask=kmask_r, other=0), rks, kdt)
            ck_e = _dequant(tl.load(ck_ptr, mask=kmask_c, other=0), cks, kdt).to(tl.float32)
            ck_o = _dequant(tl.load(ck_ptr + 1, mask=kmask_c, other=0), cks, kdt).to(tl.float32)
        else:
            rk_e = tl.load(rk_ptr, mask=kmask_r, other=0.0)
            rk_o = tl.load(rk_ptr + 1, mask=kmask_r, other=0.0)
            ck_e = tl.load(ck_ptr, mask=kmask_c, other=0.0).to(tl.float32)
            ck_o = tl.load(ck_ptr + 1, mask=kmask_c, other=0.0).to(tl.float32)
        cs_ptr = c_n[None, :] * HALF + offs_i[:, None]
        cos = tl.load(COS + cs_ptr, mask=kmask_c, other=0.0)
        sin = tl.load(SIN + cs_ptr, mask=kmask_c, other=0.0)
        rot_e = _round_as(ck_e * cos - ck_o * sin, rk_e.dtype).to(rk_e.dtype)  # as the reference stores them
        rot_o = _round_as(ck_e * sin + ck_o * cos, rk_e.dtype).to(rk_e.dtype)
        k_e = tl.where(is_cond[None, :], rot_e, rk_e)
        k_o = tl.where(is_cond[None, :], rot_o, rk_o)
        if UPCAST:
            k_e, k_o = k_e.to(tl.float32), k_o.to(tl.float32)
        s = tl.dot(q_e, k_e, input_precision=PRECISION) + tl.dot(q_o, k_o, input_precision=PRECISION)
        s = tl.where((is_ring | is_cond)[None, :], s * SCALE_LOG2E, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        m_i = m_new
        # V tiles [BLOCK_N, BLOCK_H] from the ring or the conditioning cache.
        vmask_r = is_ring[:, None] & mask_i[None, :]
        vmask_c = is_cond[:, None] & mask_i[None, :]
        rv_ptr = RV + b * srvb + h * srvh + offs_n[:, None] * srvl + 2 * offs_i[None, :]
        cv_ptr = CV + b * scvb + h * scvh + c_n[:, None] * scvl + 2 * offs_i[None, :]
        if FP8:
            vdt = Q.dtype.element_ty
            rvs = tl.load(RVS + b * srvsb + h * srvsh + offs_n * srvsl, mask=is_ring, other=0.0)[:, None]
            cvs = tl.load(CVS + b * scvsb + h * scvsh + c_n * scvsl, mask=is_cond, other=0.0)[:, None]
            v_e = (_dequant(tl.load(rv_ptr, mask=vmask_r, other=0), rvs, vdt)
                   + _dequant(tl.load(cv_ptr, mask=vmask_c, other=0), cvs, vdt))
            v_o = (_dequant(tl.load(rv_ptr + 1, mask=vmask_r, other=0), rvs, vdt)
                   + _dequant(tl.load(cv_ptr + 1, mask=vmask_c, other=0), cvs, vdt))
        else:
            v_e = tl.load(rv_ptr, mask=vmask_r, other=0.0) + tl.load(cv_ptr, mask=vmask_c, other=0.0)
            v_o = tl.load(rv_ptr + 1, mask=vmask_r, other=0.0) + tl.load(cv_ptr + 1, mask=vmask_c, other=0.0)
        if UPCAST:
            v_e, v_o = v_e.to(tl.float32), v_o.to(tl.float32)
        acc_e = acc_e * alpha[:, None]
        acc_o = acc_o * alpha[:, None]
        if SPLIT_P:
            p_hi = p.to(v_e.dtype)
            p_lo = (p - p_hi.to(tl.float32)).to(v_e.dtype)
            acc_e += tl.dot(p_hi, v_e) + tl.dot(p_lo, v_e)
            acc_o += tl.dot(p_hi, v_o) + tl.dot(p_lo, v_o)
        else:
            acc_e += tl.dot(p, v_e, input_precision=PRECISION)
            acc_o += tl.dot(p, v_o, input_precision=PRECISION)
    o_ptr = OUT + b * sob + h * soh + offs_m[:, None] * sol + 2 * offs_i[None, :]
    inv = 1.0 / l_i[:, None]
    out_dtype = OUT.dtype.element_ty
    tl.store(o_ptr, _round_as(acc_e * inv, out_dtype).to(out_dtype), mask=qmask)
    tl.store(o_ptr + 1, _round_as(acc_o * inv, out_dtype).to(out_dtype), mask=qmask)


def rolling_attention_fwd(q: torch.Tensor, ring_k: torch.Tensor, ring_v: torch.Tensor, valid: int,
                          cond_k: torch.Tensor, cond_v: torch.Tensor, cond_cos: torch.Tensor,
                          cond_sin: torch.Tensor, block_m: int | None = None,
                          block_n: int | None = None) -> torch.Tensor:
    """q: [B, Lq, H, D] (rotated); ring_k, ring_v: [B, cap, H, D]; cond_k (un-rotated), cond_v:
    [B, Lc, H, D], all one dtype (fp32 / fp16 / bf16), last dim contiguous; cond_cos, cond_sin:
    fp32 [Lc, D/2]. -> [B, Lq, H, D] contiguous in q's dtype. CPU tensors need TRITON_INTERPRET=1."""
    return _launch(q, ring_k, ring_v, valid, cond_k, cond_v, cond_cos, cond_sin, None, block_m, block_n)


def rolling_attention_fp8_fwd(q: torch.Tensor, ring_k: torch.Tensor, ring_v: torch.Tensor, ring_ks: torch.Tensor,
                              ring_vs: torch.Tensor, valid: int, cond_k: torch.Tensor, cond_v: torch.Tensor,
                              cond_ks: torch.Tensor, cond_vs: torch.Tensor, cond_cos: torch.Tensor,
                              cond_sin: torch.Tensor, block_m: int | None = None,
                              block_n: int | None = None) -> torch.Tensor:
    """rolling_attention_fp8 (liveavatar_rt/ops/kv_fp8.py): q [B, Lq, H, D] fp32 / fp16 / bf16;
    ring_k, ring_v [B, cap, H, D] and cond_k, cond_v [B, Lc, H, D] float8_e4m3fn; their fp32
    scales ring_ks, ring_vs [B, cap, H] and cond_ks, cond_vs [B, Lc, H] (any strides); cond_cos,
    cond_sin fp32 [Lc, D/2]. -> [B, Lq, H, D] contiguous in q's dtype."""
    kv, scales = (ring_k, ring_v, cond_k, cond_v), (ring_ks, ring_vs, cond_ks, cond_vs)
    for name, t, s in zip(("ring_k", "ring_v", "cond_k", "cond_v"), kv, scales):
        if t.dtype != torch.float8_e4m3fn or s.dtype != torch.float32 or s.shape != t.shape[:3]:
            raise ValueError(f"rolling_attention_fp8_fwd: {name} must be float8_e4m3fn [B, L, H, D] with an fp32 "
                             f"[B, L, H] scale, got {t.dtype} {tuple(t.shape)}, scale {s.dtype} {tuple(s.shape)}")
    # the kernel reads the codes as bytes (uint8 views: same storage, strides in bytes)
    rk, rv, ck, cv = ((t if t.stride(-1) == 1 else t.contiguous()).view(torch.uint8) for t in kv)
    return _launch(q, rk, rv, valid, ck, cv, cond_cos, cond_sin, scales, block_m, block_n)


def _launch(q, ring_k, ring_v, valid, cond_k, cond_v, cond_cos, cond_sin, scales, block_m, block_n):
    """Both launchers; `scales` None: K/V in q's dtype, else their (ring_k, ring_v, cond_k,
    cond_v) fp32 scales, K/V being E4M3 codes as uint8."""
    B, Lq, H, D = q.shape
    Lc = cond_k.shape[1]
    if D % 2 or not 0 <= valid <= ring_k.shape[1] or valid + Lc == 0:
        raise ValueError(f"rolling_attention_fwd: D={D} must be even and 0 <= valid={valid} <= cap with keys")
    q, ring_k, ring_v, cond_k, cond_v = (t if t.stride(-1) == 1 else t.contiguous()
                                         for t in (q, ring_k, ring_v, cond_k, cond_v))
    cos, sin = cond_cos.float().contiguous(), cond_sin.float().contiguous()
    out = torch.empty(B, Lq, H, D, dtype=q.dtype, device=q.device)
    fp8 = scales is not None
    if not fp8:
        scales = (cos,) * 4  # unused pointers (the FP8 branch is compiled out)
    scale_strides = [st for s in scales for st in (s.stride() if fp8 else (0, 0, 0))]
    interpret = q.device.type != "cuda"
    block_h = max(16, triton.next_power_of_2(D // 2))  # tl.dot needs dims >= 16
    block_m = block_m or (32 if interpret else 64)
    block_n = block_n or (32 if interpret else 64)
    grid = (triton.cdiv(Lq, block_m), B * H)
    _rolling_attention_fwd_kernel[grid](
        q, ring_k, ring_v, cond_k, cond_v, cos, sin, out,
        q.stride(0), q.stride(1), q.stride(2), ring_k.stride(0), ring_k.stride(1), ring_k.stride(2),
        ring_v.stride(0), ring_v.stride(1), ring_v.stride(2), cond_k.stride(0), cond_k.stride(1), cond_k.stride(2),
        cond_v.stride(0), cond_v.stride(1), cond_v.stride(2), out.stride(0), out.stride(1), out.stride(2),
        H, Lq, valid, Lc, LOG2E / D ** 0.5,
        *scales, *scale_strides,
        HALF=D // 2, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_H=block_h,
        UPCAST=interpret, SPLIT_P=not interpret and q.dtype != torch.float32, PRECISION="ieee", FP8=fp8,
    )
    return out
