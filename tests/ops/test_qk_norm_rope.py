"""`qk_norm_rope`: every provider against the reference under tests/tolerances.py's rule, for
all three outputs (q_rot, k_rot, k_normed), plus the out-variant writing k_rot into a ring slot.

Providers: `cpu` (C++) through the OpTable; the Triton kernel through its launcher on CPU under
TRITON_INTERPRET=1 (small shapes). Shapes: tiny preset, a 14B block scaled to fit (C = 5120),
odd (L = 1, D = 48, 3 heads), strided q/k (slices of a fused qkv projection).
"""
from __future__ import annotations

import os
import sys

import pytest
import torch

from liveavatar_rt import _ext
from liveavatar_rt.ops import OPS, OpTable
from liveavatar_rt.ops.qk_norm_rope import qk_norm_rope as ref
from liveavatar_rt.ops.triton_providers import CPU_REFUSAL
from tests.tolerances import assert_provider_close

if "triton" not in sys.modules:  # the interpreter needs it set before triton itself is imported
    os.environ.setdefault("TRITON_INTERPRET", "1")

DTYPES = [torch.float32, torch.bfloat16]
EPS = 1e-6
SHAPES = {"tiny": (1, 96, 2, 64), "14b_scaled": (1, 99, 40, 128), "l1_d48": (2, 1, 3, 48), "odd": (2, 7, 3, 48)}
TRITON_SHAPES = {"small": (1, 6, 2, 64), "odd": (2, 3, 3, 48)}


def make_inputs(B, L, H, D, seed=0, strided=False):
    g = torch.Generator().manual_seed(seed)
    C = H * D
    if strided:  # q, k as slices of one [B, L, 3C] projection output
        qkv = torch.randn(B, L, 3 * C, generator=g) * 3
        q, k = qkv[..., :C], qkv[..., C:2 * C]
    else:
        q, k = torch.randn(B, L, C, generator=g) * 3, torch.randn(B, L, C, generator=g) * 3
    wq, wk = torch.randn(C, generator=g), torch.randn(C, generator=g)
    ang = torch.rand(L, D // 2, generator=g, dtype=torch.float64) * 40
    return q, k, wq, wk, EPS, ang.cos().float(), ang.sin().float(), H


def check_provider(fn, args, dtype, name, **kw):
    low = tuple(a.to(dtype) if isinstance(a, torch.Tensor) and a.dim() == 3 else a for a in args)
    fp32 = tuple(a.float() if isinstance(a, torch.Tensor) else a for a in low)
    outs, ref_low, ref_fp32 = fn(*low, **kw), ref(*low), ref(*fp32)
    for what, out, rl, r32 in zip(("q_rot", "k_rot", "k_normed"), outs, ref_low, ref_fp32):
        assert out.dtype == dtype and out.shape == rl.shape, (what, out.dtype, out.shape)
        assert_provider_close(out, rl, r32, f"{name} {what}")
    return outs


@pytest.fixture(scope="module")
def cpu_table():
    if not _ext.available():
        pytest.skip(f"liveavatar_rt._C not available: {_ext.load_error()}")
    return {dt: OpTable("cpu", dt) for dt in DTYPES}


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("strided", [False, True], ids=["contiguous", "strided"])
def test_cpu_provider(cpu_table, shape, dtype, strided):
    table = cpu_table[dtype]
    assert table.chosen["qk_norm_rope"] == "cpu", table
    args = make_inputs(*SHAPES[shape], strided=strided)
    check_provider(table.qk_norm_rope, args, dtype, f"qk_norm_rope[cpu] {shape}")


def _ring_slot_case(fn, dtype, name):
    """k_rot written straight into slot [16, 32) of one layer of a [layers, B, cap, H, D] ring."""
    B, L, H, D = 2, 16, 2, 64
    ring = torch.zeros(2, B, 48, H, D, dtype=dtype)
    slot = ring[1, :, 16:32]
    outs = check_provider(fn, make_inputs(B, L, H, D, seed=4), dtype, name, k_rot_out=slot)
    assert outs[1].data_ptr() == slot.data_ptr(), "k_rot must be the given slot view"
    assert torch.equal(slot, outs[1]) and slot.abs().sum() > 0
    untouched = torch.cat([ring[0].flatten(), ring[1, :, :16].flatten(), ring[1, :, 32:].flatten()])
    assert untouched.abs().sum() == 0, "writes outside the slot"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cpu_provider_writes_ring_slot(cpu_table, dtype):
    _ring_slot_case(cpu_table[dtype].qk_norm_rope, dtype, "qk_norm_rope[cpu] ring slot")


def test_reference_writes_ring_slot():
    _ring_slot_case(ref, torch.bfloat16, "qk_norm_rope[ref] ring slot")


def test_opcheck(cpu_table):
    q, k, wq, wk, eps, cos, sin, H = make_inputs(2, 5, 3, 48)
    q, k = q.bfloat16(), k.bfloat16()
    torch.library.opcheck(torch.ops.liveavatar_rt.qk_norm_rope.default, (q, k, wq, wk, eps, cos, sin, H))
    ring = torch.zeros(2, 12, 3, 48, dtype=torch.bfloat16)
    outs = (torch.empty_like(ring[:, :5]), ring[:, 3:8], torch.empty_like(ring[:, :5]))
    torch.library.opcheck(torch.ops.liveavatar_rt.qk_norm_rope_out.default, (*outs, q, k, wq, wk, eps, cos, sin))


def test_cpu_provider_falls_back_to_reference(cpu_table):
    q, k, wq, wk, eps, cos, sin, H = make_inputs(1, 4, 2, 32)
    fn = cpu_table[torch.float32].qk_norm_rope
    for args in [(q, k, wq, wk, eps, cos.double(), sin.double(), H), (q, k.bfloat16(), wq, wk, eps, cos, sin, H)]:
        for out, want in zip(fn(*args), ref(*args)):
            assert torch.equal(out, want)
    slot = torch.zeros(1, 4, 2, 32, dtype=torch.bfloat16)  # dtype != q's: reference path, still in place
    assert fn(q, k, wq, wk, eps, cos, sin, H, k_rot_out=slot)[1] is slot and slot.abs().sum() > 0


def test_triton_provider_refuses_cpu():
    assert dict(OPS["qk_norm_rope"].candidates(torch.device("cpu"), torch.float32))["triton"] == CPU_REFUSAL


# ---------------------------------------------------------------- Triton kernel, interpreted on CPU


@pytest.fixture(scope="module")
def triton_fwd():
    tl = pytest.importorskip("triton.language")
    if type(tl.zeros).__name__ != "InterpretedFunction":
        pytest.skip("triton was imported without TRITON_INTERPRET=1: run pytest with it (make test does)")
    from liveavatar_rt.kernels import qk_norm_rope as mod

    if type(mod._qk_norm_rope_fwd_kernel).__name__ != "InterpretedFunction":
        pytest.skip("liveavatar_rt.kernels were imported without TRITON_INTERPRET=1")
    return mod.qk_norm_rope_fwd


@pytest.mark.parametrize("shape", TRITON_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_triton_kernel_interpreted(triton_fwd, shape, dtype):
    args = make_inputs(*TRITON_SHAPES[shape], strided=shape == "odd")
    check_provider(triton_fwd, args, dtype, f"qk_norm_rope[triton] {shape}")


def test_triton_kernel_writes_ring_slot(triton_fwd):
    _ring_slot_case(triton_fwd, torch.float32, "qk_norm_rope[triton] ring slot")
