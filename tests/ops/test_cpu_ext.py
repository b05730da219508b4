"""The C++ CPU ops (`liveavatar_rt._C`, csrc/cpu/) against their PyTorch references.

Both kernels are bit-identical to the references (`torch.equal`) in fp32 and bf16, for the
model's shapes, odd ones and strided inputs, so no tolerance is needed (tests/tolerances.py's
provider rule is trivially met).

The op tests skip, with the load error, when the extension is not built; `make test` always
builds it, so in CI they run.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from liveavatar_rt import _ext
from liveavatar_rt.ops import OPS, OpTable
from liveavatar_rt.ops import cpu_providers
from liveavatar_rt.ops.modulate import modulate as modulate_ref
from liveavatar_rt.ops.norm import rms_norm as rms_norm_ref
from tests.ops.conftest import seeded_randn

ROOT = Path(__file__).resolve().parents[2]
DTYPES = [torch.float32, torch.bfloat16]
EPS = 1e-6


_randn = seeded_randn  # short local name


def _assert_equal(out, ref, what):
    assert out.dtype == ref.dtype and out.shape == ref.shape, (out.dtype, ref.dtype, out.shape, ref.shape)
    if not torch.equal(out, ref):
        diff = (out.double() - ref.double()).abs()
        raise AssertionError(f"{what}: {int((out != ref).sum())} of {out.numel()} differ, max |diff| {diff.max():.3g}")


# ---------------------------------------------------------------- rms_norm

RMS_SHAPES = [
    (2, 16, 128),  # tiny preset: [B, L, C], C = 128 (2 heads of 64)
    (1, 16, 2, 64),  # per-head norm over head_dim
    (1, 3, 5120),  # 14B row width, few rows
    (1, 1, 67),  # odd C, L = 1
    (3, 67),
    (5,),  # 1-D, C below the vector width
    (1, 40000),  # one wide row: torch splits it over threads (two-pass reduction)
]


@pytest.mark.parametrize("shape", RMS_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("wdtype", [torch.float32, torch.bfloat16], ids=lambda d: f"w{str(d)[6:]}")
def test_rms_norm_bit_identical(ops, shape, dtype, wdtype):
    x = _randn(*shape).to(dtype)
    w = _randn(shape[-1], seed=1, scale=1.0).to(wdtype)
    _assert_equal(ops.rms_norm(x, w, EPS), rms_norm_ref(x, w, EPS), f"rms_norm {shape} {dtype}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("threads", [1, 2])
def test_rms_norm_bit_identical_any_thread_count(ops, dtype, threads):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for shape in [(1, 32768), (1, 65537), (7, 5120), (1, 4, 1000)]:
            x = _randn(*shape).to(dtype)
            w = _randn(shape[-1], seed=1, scale=1.0)
            _assert_equal(ops.rms_norm(x, w, EPS), rms_norm_ref(x, w, EPS), f"rms_norm {shape} threads={threads}")
    finally:
        torch.set_num_threads(before)


def _views(x_wide: torch.Tensor, C: int):
    """Non-contiguous views of x_wide [2, 6, 2C] with a contiguous last dim."""
    return {
        "slice_of_wider": x_wide[..., :C],  # rows 2C apart
        "transposed": x_wide[..., :C].transpose(0, 1).contiguous().transpose(0, 1),  # permuted dense
        "uneven_rows": x_wide[:, 1:4, C:],  # batch stride != tokens * token stride
    }


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("C", [128, 67, 5120])
def test_rms_norm_noncontiguous_rows_bit_identical(ops, dtype, C):
    x_wide = _randn(2, 6, 2 * C).to(dtype)
    w = _randn(2 * C, seed=1, scale=1.0)[::2]  # strided weight too
    for name, x in _views(x_wide, C).items():
        assert not x.is_contiguous() and x.stride(-1) == 1, name
        out = ops.rms_norm(x, w, EPS)
        assert out.is_contiguous()
        _assert_equal(out, rms_norm_ref(x, w, EPS), f"rms_norm {name} C={C} {dtype}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("C", [128, 67])
def test_rms_norm_strided_last_dim_bit_identical(ops, dtype, C):
    """Last dim strided: a step slice (torch sums a contiguous copy) and a transposed view
    (torch sums the strided row in another order; the kernel then takes torch's statistic)."""
    w = _randn(C, seed=1, scale=1.0)
    for name, x in {
        "step_slice": _randn(3, 2 * C).to(dtype)[:, ::2],
        "transposed": _randn(C, 37).to(dtype).t(),
        "transposed_3d": _randn(2, C, 5).to(dtype).transpose(1, 2),
    }.items():
        assert x.stride(-1) != 1, name
        _assert_equal(ops.rms_norm(x, w, EPS), rms_norm_ref(x, w, EPS), f"rms_norm {name} C={C} {dtype}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rms_norm_out_variant(ops, dtype):
    x = _randn(2, 7, 128).to(dtype)
    w = _randn(128, seed=1, scale=1.0)
    out = torch.empty_like(x)
    assert ops.rms_norm_out(out, x, w, EPS) is None
    _assert_equal(out, rms_norm_ref(x, w, EPS), "rms_norm_out")


def test_rms_norm_rejects_bad_inputs(ops):
    x, w = _randn(2, 8), _randn(8)
    with pytest.raises(RuntimeError, match="float32 or bfloat16"):
        ops.rms_norm(x.half(), w, EPS)
    with pytest.raises(RuntimeError, match=r"weight must have shape \[C\]"):
        ops.rms_norm(x, w[:4], EPS)
    with pytest.raises(RuntimeError, match="out dtype"):
        ops.rms_norm_out(torch.empty(2, 8, dtype=torch.bfloat16), x, w, EPS)
    with pytest.raises(RuntimeError, match="out shape"):
        ops.rms_norm_out(torch.empty(2, 9), x, w, EPS)
    with pytest.raises(RuntimeError, match="contiguous"):
        ops.rms_norm_out(torch.empty(8, 2).t(), x, w, EPS)


# ---------------------------------------------------------------- modulate

MOD_SHAPES = [  # (B, F, S, C): x_norm [B, F*S, C], shift/scale per frame [B, F, C]
    (2, 3, 16, 128),  # tiny
    (1, 2, 3, 5120),  # 14B row width
    (1, 1, 1, 67),  # odd C, L = 1
    (2, 5, 1, 67),  # per token (S = 1)
    (3, 1, 7, 33),  # per sample (F = 1)
]


@pytest.mark.parametrize("B,F,S,C", MOD_SHAPES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("out_dtype", DTYPES, ids=lambda d: f"out_{str(d)[6:]}")
def test_modulate_bit_identical(ops, B, F, S, C, dtype, out_dtype):
    x = _randn(B, F * S, C).to(dtype)
    shift, scale = _randn(B, F, C, seed=1), _randn(B, F, C, seed=2, scale=0.5)
    ref = modulate_ref(x.view(B, F, S, C), shift[:, :, None], scale[:, :, None], out_dtype).view(B, F * S, C)
    _assert_equal(ops.modulate(x, shift, scale, out_dtype), ref, f"modulate {(B, F, S, C)} {dtype}->{out_dtype}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_modulate_noncontiguous_and_broadcast_batch(ops, dtype):
    B, F, S, C = 2, 3, 4, 128
    # x_norm rows are a slice of a wider buffer; shift/scale are strided views of one [B, F, 6, C]
    # tensor, as model/block.py takes them; batch-1 shift/scale broadcast over B.
    x = _randn(B, F * S, 2 * C).to(dtype)[..., C:]
    m = _randn(B, F, 6, C, seed=3)
    shift, scale = m[:, :, 0], m[:, :, 1]
    assert not (x.is_contiguous() or shift.is_contiguous())
    ref = modulate_ref(x.reshape(B, F, S, C), shift[:, :, None], scale[:, :, None], torch.bfloat16)
    _assert_equal(ops.modulate(x, shift, scale, torch.bfloat16), ref.view(B, F * S, C), "modulate strided")
    x_t = x.transpose(0, 1).contiguous().transpose(0, 1)  # permuted batch / token dims
    _assert_equal(ops.modulate(x_t, shift, scale, torch.bfloat16), ref.view(B, F * S, C), "modulate permuted")
    s1, c1 = shift[:1], scale[:1]
    ref1 = modulate_ref(x.reshape(B, F, S, C), s1[:, :, None], c1[:, :, None], dtype).view(B, F * S, C)
    _assert_equal(ops.modulate(x, s1, c1, dtype), ref1, "modulate batch-broadcast")


@pytest.mark.parametrize("out_dtype", DTYPES, ids=str)
def test_modulate_out_variant(ops, out_dtype):
    x = _randn(2, 6, 128).to(torch.bfloat16)
    shift, scale = _randn(2, 3, 128, seed=1), _randn(2, 3, 128, seed=2)
    out = torch.empty(2, 6, 128, dtype=out_dtype)
    assert ops.modulate_out(out, x, shift, scale) is None
    ref = modulate_ref(x.view(2, 3, 2, 128), shift[:, :, None], scale[:, :, None], out_dtype).view(2, 6, 128)
    _assert_equal(out, ref, "modulate_out")


def test_modulate_rejects_bad_inputs(ops):
    x, s = _randn(1, 6, 8), _randn(1, 3, 8)
    with pytest.raises(RuntimeError, match="must divide"):
        ops.modulate(x, _randn(1, 4, 8), _randn(1, 4, 8), torch.float32)
    with pytest.raises(RuntimeError, match="must be float32"):
        ops.modulate(x, s.bfloat16(), s, torch.float32)
    with pytest.raises(RuntimeError, match=r"x_norm must be \[B, L, C\]"):
        ops.modulate(x[0], s, s, torch.float32)
    with pytest.raises(RuntimeError, match="channels"):
        ops.modulate(x, s[..., :4], s[..., :4], torch.float32)
    with pytest.raises(RuntimeError, match="out_dtype must be float32 or bfloat16"):
        ops.modulate(x, s, s, torch.float16)
    with pytest.raises(RuntimeError, match="float32 or bfloat16"):
        ops.modulate(x.double(), s, s, torch.float32)


# ---------------------------------------------------------------- torch.library / providers


def test_opcheck(ops):
    x, w = _randn(2, 5, 67).bfloat16(), _randn(67, seed=1)
    torch.library.opcheck(ops.rms_norm.default, (x, w, EPS))
    torch.library.opcheck(ops.rms_norm_out.default, (torch.empty_like(x), x, w, EPS))
    x = _randn(2, 6, 128).bfloat16()
    shift, scale = _randn(2, 3, 128, seed=1), _randn(2, 3, 128, seed=2)
    torch.library.opcheck(ops.modulate.default, (x, shift, scale, torch.bfloat16))
    torch.library.opcheck(ops.modulate_out.default, (torch.empty(2, 6, 128), x, shift, scale))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cpu_provider_is_chosen_and_matches(ops, dtype):
    table = OpTable("cpu", dtype)
    assert table.chosen["rms_norm"] == "cpu" and table.chosen["modulate"] == "cpu", table
    B, F, S, C = 2, 3, 4, 128
    x = _randn(B, F * S, C).to(dtype)
    w = _randn(C, seed=1, scale=1.0)
    _assert_equal(table.rms_norm(x, w, EPS), rms_norm_ref(x, w, EPS), "provider rms_norm")
    one = torch.full((1,), 0.5)  # broadcast weight: not a kernel form, runs the reference
    _assert_equal(table.rms_norm(x, one, EPS), rms_norm_ref(x, one, EPS), "provider rms_norm fallback")
    m = _randn(B, F, 6, C, seed=3)
    # model/block.py's call: x_norm [B, F, S, C], shift/scale [B, F, 1, C] views of m
    shift, scale = m[:, :, 0].unsqueeze(2), m[:, :, 1].unsqueeze(2)
    for out_dtype in DTYPES:
        for xn in (x.view(B, F, S, C), x.float().view(B, F, S, C)):
            _assert_equal(table.modulate(xn, shift, scale, out_dtype), modulate_ref(xn, shift, scale, out_dtype),
                          "provider modulate per frame")
    # the kernel's own per-frame 3-D form [B, F, C] against x_norm [B, F*S, C]
    sh3, sc3 = m[:, :, 2], m[:, :, 3]
    want = modulate_ref(x.view(B, F, S, C), sh3[:, :, None], sc3[:, :, None], dtype).view(B, F * S, C)
    _assert_equal(table.modulate(x, sh3, sc3, dtype), want, "provider modulate [B, F, C]")
    # per token and per sample 3-D forms, and a 1-D [C] shift
    for sh in (_randn(B, F * S, C, seed=4), _randn(B, 1, C, seed=5), _randn(C, seed=6)):
        _assert_equal(table.modulate(x, sh, sh, dtype), modulate_ref(x, sh, sh, dtype), f"provider {tuple(sh.shape)}")
    # forms the kernel does not take fall back to the reference: bf16 shift, fp64 x
    sh = _randn(B, F * S, C, seed=7)
    _assert_equal(table.modulate(x, sh.bfloat16(), sh, dtype), modulate_ref(x, sh.bfloat16(), sh, dtype), "fallback")
    xd = x.double()
    _assert_equal(table.modulate(xd, sh, sh, dtype), modulate_ref(xd, sh, sh, dtype), "fallback fp64")


def test_cpu_provider_refusals():
    assert cpu_providers.supports(torch.device("cpu"), torch.float16) in (
        "dtype torch.float16 is not bf16/fp32",
        f"liveavatar_rt._C not built: {_ext.load_error()}",
    )
    why = cpu_providers.supports(torch.device("meta"), torch.bfloat16)
    assert why is not None and ("not CPU" in why or "not built" in why)
    names = {n for n, _ in OPS["rms_norm"].candidates(torch.device("cpu"), torch.float32)}
    assert "cpu" in names and "cpu" in {n for n, _ in OPS["modulate"].candidates(torch.device("cpu"), torch.float32)}


# ---------------------------------------------------------------- import without the extension


def _run(code: str, **env) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=full_env, capture_output=True, text=True,
                          timeout=300)


def test_import_does_not_load_extension():
    r = _run("import sys, liveavatar_rt, liveavatar_rt.ops; print('liveavatar_rt._C' in sys.modules)")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


def test_package_imports_and_explains_without_extension():
    code = (
        "import torch, liveavatar_rt\n"
        "from liveavatar_rt import _ext\n"
        "from liveavatar_rt.ops import OpTable, cpu_providers\n"
        "assert _ext.available() is False\n"
        "t = OpTable('cpu', torch.bfloat16)\n"
        "assert t.chosen['rms_norm'] == 'ref' and t.chosen['modulate'] == 'ref', t\n"
        "x = torch.randn(2, 8).bfloat16()\n"
        "t.rms_norm(x, torch.ones(8), 1e-6)\n"
        "print(_ext.load_error())\n"
        "print(cpu_providers.supports(torch.device('cpu'), torch.bfloat16))\n"
    )
    r = _run(code, LIVEAVATAR_RT_DISABLE_EXT="1")
    assert r.returncode == 0, r.stderr
    error, reason = r.stdout.strip().splitlines()
    assert "LIVEAVATAR_RT_DISABLE_EXT" in error
    assert reason == f"liveavatar_rt._C not built: {error}"
