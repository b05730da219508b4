"""`rolling_attention_fp8` (liveavatar_rt/ops/kv_fp8.py): E4M3 K/V with per-(token, head) scales.

- quantize_kv / dequantize_kv: round trip, zero rows, the E4M3 maximum, scale shapes.
- `cpu` provider (C++, liveavatar_rt._C; skipped with the load error when not built): it
  dequantizes each row while gathering it, so it must equal `rolling_attention`'s CPU kernel on
  the dequantized tensors bit for bit (same CPU, same instruction-set level), on
  test_rolling_attention.py's shapes, strided views of a cache layer, every E4M3 code and a
  wrapped-around ring; and the fp8 reference within tests/tolerances.py's provider rule.
- Triton kernel through its launcher under TRITON_INTERPRET=1 (small shapes): the reference
  within the provider rule, and equal to the bf16 Triton kernel on the dequantized tensors.
"""
from __future__ import annotations

import os
import sys

import pytest
import torch

from liveavatar_rt import _ext
from liveavatar_rt.ops import OPS, OpTable, cpu_providers
from liveavatar_rt.ops.kv_fp8 import E4M3, E4M3_MAX, dequantize_kv, quantize_kv
from liveavatar_rt.ops.kv_fp8 import rolling_attention_fp8 as ref8
from liveavatar_rt.ops.triton_providers import CPU_REFUSAL
from tests.ops.test_rolling_attention import DTYPES, SHAPES, TRITON_SHAPES, make_inputs
from tests.tolerances import assert_provider_close, rel_err

if "triton" not in sys.modules:  # the interpreter needs it set before triton itself is imported
    os.environ.setdefault("TRITON_INTERPRET", "1")


def fp8_inputs(q, rk, rv, valid, ck, cv, cos, sin, dtype=torch.float32):
    """make_inputs' form -> the op's arguments: q in `dtype`, K/V quantized (from fp32)."""
    (rk8, rks), (rv8, rvs), (ck8, cks), (cv8, cvs) = (quantize_kv(t) for t in (rk, rv, ck, cv))
    return (q.to(dtype), rk8, rv8, rks, rvs, valid, ck8, cv8, cks, cvs, cos, sin)


def dequantized(args):
    """The op's arguments -> rolling_attention's, K/V dequantized to q's dtype (as the reference)."""
    q, rk8, rv8, rks, rvs, valid, ck8, cv8, cks, cvs, cos, sin = args
    dq = [dequantize_kv(x, s, q.dtype) for x, s in ((rk8, rks), (rv8, rvs), (ck8, cks), (cv8, cvs))]
    return (q, dq[0], dq[1], valid, dq[2], dq[3], cos, sin)


def check_against_reference(fn, args, name):
    """fn(args) vs the fp8 reference in q's dtype, and in fp32 (q's values, same codes) as truth."""
    out = fn(*args)
    q = args[0]
    assert out.dtype == q.dtype and out.shape == q.shape
    assert_provider_close(out, ref8(*args), ref8(q.float(), *args[1:]), name)


def assert_bit_equal(out, want, what):
    assert out.dtype == want.dtype and out.shape == want.shape, (out.dtype, want.dtype, out.shape, want.shape)
    if not torch.equal(out, want):
        diff = (out.double() - want.double()).abs()
        raise AssertionError(f"{what}: {int((out != want).sum())} of {out.numel()} differ, max |diff| {diff.max():.3g}")


def all_codes_inputs(dtype, nan=False):
    """Every E4M3 code in the ring/cond K and V ([1, 8, 1, 32] each, 256 codes; the two NaN codes
    0x7F/0xFF replaced by 0 unless `nan`), random positive scales."""
    g = torch.Generator().manual_seed(7)
    codes = torch.arange(256, dtype=torch.uint8)
    if not nan:
        codes[(codes & 0x7F) == 0x7F] = 0

    def kv(seed):
        perm = torch.randperm(256, generator=torch.Generator().manual_seed(seed))
        return codes[perm].view(1, 8, 1, 32).view(E4M3)

    scales = [torch.rand(1, 8, 1, generator=g) * 0.01 + 1e-4 for _ in range(4)]
    ang = torch.rand(8, 16, generator=g) * 40
    q = torch.randn(1, 5, 1, 32, generator=g).to(dtype)
    return (q, kv(1), kv(2), scales[0], scales[1], 8, kv(3), kv(4), scales[2], scales[3], ang.cos(), ang.sin())


# ---------------------------------------------------------------- quantize_kv / dequantize_kv


def test_quantize_round_trip():
    x = torch.randn(2, 64, 8, 128, generator=torch.Generator().manual_seed(0))
    x8, s = quantize_kv(x)
    assert x8.dtype == E4M3 and x8.shape == x.shape and s.dtype == torch.float32 and s.shape == (2, 64, 8)
    for dtype in (torch.float32, torch.bfloat16):
        d = dequantize_kv(x8, s, dtype)
        assert d.dtype == dtype and d.shape == x.shape
        row_err = (d.float() - x).norm(dim=-1) / x.norm(dim=-1)
        assert row_err.max() < 0.04, f"{dtype}: worst row's relative error {row_err.max():.3%}"
    assert rel_err(dequantize_kv(x8, s, torch.float32), x)[1] < 0.04


def test_quantize_zero_rows_and_max():
    x = torch.randn(1, 4, 2, 16, generator=torch.Generator().manual_seed(1))
    x[0, 1] = 0  # a silent token: both heads zero
    x[0, 2, 0] = torch.linspace(-448, 448, 16)  # a row whose maximum is E4M3's: scale 1, kept exactly
    x8, s = quantize_kv(x.bfloat16())
    d = dequantize_kv(x8, s, torch.float32)
    assert s.shape == (1, 4, 2) and torch.isfinite(s).all() and (s > 0).all()
    assert torch.equal(d[0, 1], torch.zeros(2, 16)) and not d.isnan().any()
    assert s[0, 2, 0] == 1 and d[0, 2, 0, 0] == -448 and d[0, 2, 0, -1] == 448
    # every row's largest code is the E4M3 maximum, and it comes back as the row's maximum
    assert torch.equal(x8.float().abs().amax(-1)[s > 1e-12], torch.full_like(s[s > 1e-12], E4M3_MAX))
    amax = x.bfloat16().float().abs().amax(-1)
    assert torch.allclose(d.abs().amax(-1), amax, rtol=1e-6, atol=0)


# ---------------------------------------------------------------- cpu provider


@pytest.fixture(scope="module")
def cpu_fn():
    """The `cpu` provider itself (the OpTable picks it only on AVX-512 CPUs, see below)."""
    if not _ext.available():
        pytest.skip(f"liveavatar_rt._C not available: {_ext.load_error()}")
    return cpu_providers.rolling_attention_fp8


def test_cpu_provider_is_default_only_with_avx512(cpu_fn):
    avx512 = torch.backends.cpu.get_cpu_capability() == "AVX512"
    for dtype in DTYPES:
        assert OpTable("cpu", dtype).chosen["rolling_attention_fp8"] == ("cpu" if avx512 else "ref")


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cpu_provider_equals_bf16_kernel_on_dequantized(cpu_fn, shape, dtype):
    args = fp8_inputs(*make_inputs(*SHAPES[shape]), dtype=dtype)
    want = torch.ops.liveavatar_rt.rolling_attention.default(*dequantized(args))
    assert_bit_equal(cpu_fn(*args), want, f"rolling_attention_fp8[cpu] {shape} {dtype}")


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cpu_provider_vs_reference(cpu_fn, shape, dtype):
    args = fp8_inputs(*make_inputs(*SHAPES[shape]), dtype=dtype)
    check_against_reference(cpu_fn, args, f"rolling_attention_fp8[cpu] {shape}")


def strided_inputs(dtype):
    """q from a fused [B, L, 3, H, D] buffer; ring K/V as layer 1 of [layers, B, cap, H, D] caches
    (scales: layer 1 of [layers, B, cap, H]), valid < cap; cond K with a sliced head dim and cond
    V with permuted batch/token strides, their scales permuted too."""
    B, Lq, H, D, cap, Lc, layers = 2, 12, 2, 64, 48, 10, 3
    g = torch.Generator().manual_seed(1)
    q = torch.randn(B, Lq, 3, H, D, generator=g).to(dtype)[:, :, 0]
    (rk8, rks), (rv8, rvs) = (quantize_kv(torch.randn(layers, B, cap, H, D, generator=g) * 2) for _ in range(2))
    ck8, cks = quantize_kv(torch.randn(Lc, B, H, D, generator=g) * 2)
    wide = torch.zeros(Lc, B, H, 2 * D, dtype=torch.uint8)  # codes in the first half of wider rows
    wide[..., :D] = ck8.view(torch.uint8)
    ck8, cks = wide[..., :D].view(E4M3).transpose(0, 1), cks.transpose(0, 1)
    cv8, cvs = quantize_kv(torch.randn(Lc, B, H, D, generator=g))
    cv8, cvs = cv8.transpose(0, 1), cvs.transpose(0, 1)
    ang = torch.rand(Lc, D // 2, generator=g) * 40
    args = (q, rk8[1], rv8[1], rks[1], rvs[1], 30, ck8, cv8, cks, cvs, ang.cos(), ang.sin())
    assert not any(a.is_contiguous() for a in (q, ck8, cv8, cks, cvs))
    return args


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cpu_provider_strided(cpu_fn, dtype):
    args = strided_inputs(dtype)
    want = torch.ops.liveavatar_rt.rolling_attention.default(*dequantized(args))
    assert_bit_equal(cpu_fn(*args), want, f"rolling_attention_fp8[cpu] strided {dtype}")
    check_against_reference(cpu_fn, args, "rolling_attention_fp8[cpu] strided")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cpu_provider_every_code(cpu_fn, dtype):
    """All 254 finite E4M3 codes (subnormals, +-0, +-448) decode exactly as torch does, and the
    two NaN codes as NaN: with them the result is the bf16/fp32 kernel's on torch's NaN values
    (that kernel's own NaN handling, not the reference's: one NaN key poisons every output there)."""
    args = all_codes_inputs(dtype)
    want = torch.ops.liveavatar_rt.rolling_attention.default(*dequantized(args))
    assert_bit_equal(cpu_fn(*args), want, f"rolling_attention_fp8[cpu] every code {dtype}")
    args = all_codes_inputs(dtype, nan=True)
    out, want = cpu_fn(*args), torch.ops.liveavatar_rt.rolling_attention.default(*dequantized(args))
    assert want.isnan().any()
    torch.testing.assert_close(out, want, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cpu_provider_wrapped_ring(cpu_fn, dtype):
    """A full ring (valid == cap) whose write slot is in the middle: the tokens in time order are
    ring[slot:] then ring[:slot]; attention is the same as over the unwrapped ring."""
    B, Lq, H, D, cap, valid, Lc = SHAPES["tiny"]
    q, rk, rv, _, ck, cv, cos, sin = make_inputs(B, Lq, H, D, cap, valid, Lc, seed=4)
    slot = 160
    timeline = fp8_inputs(q, rk, rv, cap, ck, cv, cos, sin, dtype=dtype)  # ring in time order
    wrapped = list(timeline)
    for i in (1, 2, 3, 4):  # ring_k, ring_v and their scales, rolled so the oldest token sits at `slot`
        wrapped[i] = timeline[i].view(torch.uint8).roll(slot, 1).view(E4M3) if i < 3 else timeline[i].roll(slot, 1)
    out = cpu_fn(*wrapped)
    assert_bit_equal(out, torch.ops.liveavatar_rt.rolling_attention.default(*dequantized(wrapped)),
                     f"rolling_attention_fp8[cpu] wrapped {dtype}")
    assert_provider_close(out, ref8(*timeline), ref8(timeline[0].float(), *timeline[1:]),
                          f"rolling_attention_fp8[cpu] wrapped ring vs time order {dtype}")


def test_cpu_kernel_errors(cpu_fn):
    op = torch.ops.liveavatar_rt.rolling_attention_fp8.default
    args = list(fp8_inputs(*make_inputs(1, 4, 2, 32, 8, 8, 3)))
    bad = list(args)
    bad[1] = dequantize_kv(args[1], args[3], torch.float32)  # ring_k as plain fp32 values
    with pytest.raises(RuntimeError, match=r"rolling_attention_fp8: ring_k/ring_v/cond_k/cond_v must be Float8_e4m3fn"):
        op(*bad)
    bad = list(args)
    bad[1] = bad[1].view(torch.uint8)
    with pytest.raises(RuntimeError, match=r"must be Float8_e4m3fn \(E4M3 codes\), got Byte"):
        op(*bad)
    bad = list(args)
    bad[3] = args[3][:, :-1]  # one scale short
    with pytest.raises(RuntimeError, match=r"ring_ks must be \[B, L, H\] = \[1, 8, 2\] \(its K/V's\), got \[1, 7, 2\]"):
        op(*bad)
    bad = list(args)
    bad[9] = args[9].unsqueeze(-1)
    with pytest.raises(RuntimeError, match=r"cond_vs must be \[B, L, H\]"):
        op(*bad)
    bad = list(args)
    bad[4] = args[4].bfloat16()
    with pytest.raises(RuntimeError, match=r"ring_vs must be float32, got BFloat16"):
        op(*bad)
    bad = list(args)
    bad[0] = args[0].half()
    with pytest.raises(RuntimeError, match=r"q must be float32 or bfloat16, got Half"):
        op(*bad)


def test_cpu_provider_falls_back_to_reference(cpu_fn):
    """Forms the kernel does not take (fp64 scales, fp64 tables, bf16 K/V) run the reference."""
    args = list(fp8_inputs(*make_inputs(1, 4, 2, 32, 8, 8, 3)))
    for i, t in ((3, args[3].double()), (10, args[10].double()), (6, dequantize_kv(args[6], args[8], torch.float32))):
        alt = list(args)
        alt[i] = t
        assert torch.equal(cpu_fn(*alt), ref8(*alt))


def test_opcheck(cpu_fn):
    """opcheck without test_schema: torch's SchemaCheckMode compares the inputs before / after with
    torch.allclose, which has no float8 kernel. Instead: the inputs' bytes are unchanged."""
    op = torch.ops.liveavatar_rt.rolling_attention_fp8.default
    args = fp8_inputs(*make_inputs(1, 6, 2, 32, 16, 11, 5))
    utils = ("test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
    for a in ((args[0].bfloat16(), *args[1:]), args):
        before = [t.clone() for t in a if isinstance(t, torch.Tensor)]
        torch.library.opcheck(op, a, test_utils=utils)
        torch.library.opcheck(torch.ops.liveavatar_rt.rolling_attention_fp8_isa.default, (*a, -1), test_utils=utils)
        op(*a)
        after = [t for t in a if isinstance(t, torch.Tensor)]
        assert all(torch.equal(x.view(torch.uint8), y.view(torch.uint8)) if x.dtype == E4M3 else torch.equal(x, y)
                   for x, y in zip(before, after))


def test_triton_provider_refuses_cpu():
    cands = dict(OPS["rolling_attention_fp8"].candidates(torch.device("cpu"), torch.bfloat16))
    assert cands["triton"] == CPU_REFUSAL


# ---------------------------------------------------------------- Triton kernel, interpreted on CPU


@pytest.fixture(scope="module")
def triton_mod():
    tl = pytest.importorskip("triton.language")
    if type(tl.zeros).__name__ != "InterpretedFunction":
        pytest.skip("triton was imported without TRITON_INTERPRET=1: run pytest with it (make test does)")
    from liveavatar_rt.kernels import rolling_attention as mod

    if type(mod._rolling_attention_fwd_kernel).__name__ != "InterpretedFunction":
        pytest.skip("liveavatar_rt.kernels were imported without TRITON_INTERPRET=1")
    return mod


@pytest.mark.parametrize("shape", TRITON_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_triton_kernel_interpreted(triton_mod, shape, dtype):
    """Within the provider rule of the reference, and (same dequantized values, same math in the
    interpreter) equal to the bf16/fp32 Triton kernel run on the dequantized tensors."""
    args = fp8_inputs(*make_inputs(*TRITON_SHAPES[shape]), dtype=dtype)
    out = triton_mod.rolling_attention_fp8_fwd(*args)
    check_against_reference(lambda *a: out, args, f"rolling_attention_fp8[triton] {shape}")
    assert_bit_equal(out, triton_mod.rolling_attention_fwd(*dequantized(args)),
                     f"rolling_attention_fp8[triton] vs triton on dequantized {shape} {dtype}")


def test_triton_kernel_strided_and_every_code_interpreted(triton_mod):
    for dtype in (torch.float32, torch.bfloat16):
        for what, args in (("strided", strided_inputs(dtype)), ("every code", all_codes_inputs(dtype))):
            out = triton_mod.rolling_attention_fp8_fwd(*args)
            assert_bit_equal(out, triton_mod.rolling_attention_fwd(*dequantized(args)),
                             f"rolling_attention_fp8[triton] {what} {dtype}")
            check_against_reference(lambda *a: out, args, f"rolling_attention_fp8[triton] {what} {dtype}")


def test_triton_launcher_rejects_non_fp8(triton_mod):
    args = list(fp8_inputs(*make_inputs(1, 4, 1, 32, 8, 8, 3)))
    args[2] = dequantize_kv(args[2], args[4], torch.float32)
    with pytest.raises(ValueError, match="ring_v must be float8_e4m3fn"):
        triton_mod.rolling_attention_fp8_fwd(*args)
