"""`rolling_attention`: every provider against the reference under tests/tolerances.py's rule.

Providers: `cpu` (C++, liveavatar_rt._C; skipped with the load error when not built), called
directly (the OpTable picks it by default only on AVX-512 CPUs), and the Triton kernel through its launcher on CPU under TRITON_INTERPRET=1 (small
shapes: the interpreter is slow). Shapes: the tiny preset, 14B-per-block scaled to fit (H=40,
D=128, a block of 3 frames of S=33 tokens, ring 4 blocks, Lc = 2.5 S), odd ones (Lq = 1,
D = 48, valid < cap, cond only, no cond), strided views, and a ring that has wrapped around.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from liveavatar_rt import _ext
from liveavatar_rt.cache.kv import CondCache, RingCache
from liveavatar_rt.ops import OPS, OpTable, cpu_providers
from liveavatar_rt.ops.rolling_attention import rolling_attention as ref
from liveavatar_rt.ops.triton_providers import CPU_REFUSAL
from tests.tolerances import assert_provider_close

if "triton" not in sys.modules:  # the interpreter needs it set before triton itself is imported
    os.environ.setdefault("TRITON_INTERPRET", "1")

DTYPES = [torch.float32, torch.bfloat16]
# (B, Lq, H, D, cap, valid, Lc)
SHAPES = {
    "tiny": (1, 96, 2, 64, 384, 384, 80),
    "tiny_filling": (1, 96, 2, 64, 384, 192, 80),
    "14b_scaled": (1, 99, 40, 128, 396, 396, 82),
    "lq1_d48": (2, 1, 3, 48, 20, 7, 9),
    "cond_only": (1, 5, 2, 64, 16, 0, 11),
    "no_cond": (1, 7, 2, 64, 16, 16, 0),
}
TRITON_SHAPES = {"small": (1, 40, 2, 64, 96, 70, 20), "lq1_d48": (2, 1, 3, 48, 20, 7, 9),
                 "no_cond": (1, 5, 1, 32, 8, 8, 0)}


def make_inputs(B, Lq, H, D, cap, valid, Lc, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Lq, H, D, generator=g)
    rk, rv = torch.randn(B, cap, H, D, generator=g), torch.randn(B, cap, H, D, generator=g)
    ck, cv = torch.randn(B, Lc, H, D, generator=g) * 2, torch.randn(B, Lc, H, D, generator=g)
    ang = torch.rand(Lc, D // 2, generator=g, dtype=torch.float64) * 40
    return (q * 2, rk * 2, rv, valid, ck, cv, ang.cos().float(), ang.sin().float())  # * 2: peakier softmax


def check_provider(fn, args, dtype, name):
    """args in fp32; the provider and the low-precision reference get them in `dtype`, the fp32
    reference gets the same rounded values in fp32."""
    low = tuple(a.to(dtype) if isinstance(a, torch.Tensor) and a.dim() == 4 else a for a in args)
    fp32 = tuple(a.float() if isinstance(a, torch.Tensor) else a for a in low)
    out = fn(*low)
    assert out.dtype == dtype and out.shape == args[0].shape
    assert_provider_close(out, ref(*low), ref(*fp32), name)


@pytest.fixture(scope="module")
def cpu_fn():
    """The `cpu` provider itself (the OpTable picks it only on AVX-512 CPUs, see below)."""
    if not _ext.available():
        pytest.skip(f"liveavatar_rt._C not available: {_ext.load_error()}")
    return cpu_providers.rolling_attention


def test_cpu_provider_is_default_only_with_avx512(cpu_fn):
    avx512 = torch.backends.cpu.get_cpu_capability() == "AVX512"
    for dtype in DTYPES:
        assert OpTable("cpu", dtype).chosen["rolling_attention"] == ("cpu" if avx512 else "ref")


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cpu_provider(cpu_fn, shape, dtype):
    check_provider(cpu_fn, make_inputs(*SHAPES[shape]), dtype, f"rolling_attention[cpu] {shape}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cpu_provider_strided(cpu_fn, dtype):
    """q from a fused [B, L, 3, H, D] buffer, the ring as one layer of a [layers, B, cap, H, D]
    cache with batch 2, cond K/V with permuted batch/token strides and a sliced head dim."""
    B, Lq, H, D, cap, Lc = 2, 12, 2, 64, 48, 10
    g = torch.Generator().manual_seed(1)
    q = torch.randn(B, Lq, 3, H, D, generator=g)[:, :, 0]
    ring = torch.randn(3, 2, B, cap, H, D, generator=g)
    ck = torch.randn(Lc, B, H, 2 * D, generator=g).transpose(0, 1)[..., :D]
    cv = torch.randn(Lc, B, H, D, generator=g).transpose(0, 1)
    ang = torch.rand(Lc, D // 2, generator=g) * 40
    args = (q, ring[1, 0], ring[1, 1], 30, ck, cv, ang.cos(), ang.sin())
    assert not any(a.is_contiguous() for a in (q, ck, cv))
    check_provider(cpu_fn, args, dtype, "rolling_attention[cpu] strided")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_ring_wraparound_through_ring_cache(cpu_fn, dtype):
    """RingCache.attend over 7 blocks of a 3-block ring (slots wrap twice): the cpu provider's
    outputs and ring contents match the reference OpTable's within the provider rule."""
    layers, B, n, H, D, Lc = 1, 1, 16, 2, 64, 12
    g = torch.Generator().manual_seed(2)
    cond = CondCache(layers)
    cond.k[0], cond.v[0] = (torch.randn(B, Lc, H, D, generator=g).to(dtype) for _ in range(2))
    ang_c = torch.rand(Lc, D // 2, generator=g, dtype=torch.float64) * 30
    cond_rope = (ang_c.cos().float().double(), ang_c.sin().float().double())  # fp32-exact, as model/rope.py
    dtypes = {"cpu": dtype, "ref": dtype, "fp32": torch.float32}
    rings = {name: RingCache(layers, B, 3 * n, H, D, dt) for name, dt in dtypes.items()}
    tables = {"cpu": OpTable("cpu", dtype, force="ref"), "ref": OpTable("cpu", dtype, force="ref"),
              "fp32": OpTable("cpu", torch.float32, force="ref")}
    tables["cpu"].rolling_attention = cpu_fn
    cond32 = CondCache(layers)
    cond32.k[0], cond32.v[0] = cond.k[0].float(), cond.v[0].float()
    for block in range(7):
        ang = torch.rand(n, D // 2, generator=g, dtype=torch.float64) * 30
        q_rope = (ang.cos().float().double(), ang.sin().float().double())
        q, k, v = (torch.randn(B, n, H, D, generator=g).to(dtype) for _ in range(3))
        out = {}
        for name, ring in rings.items():
            c = cond32 if name == "fp32" else cond
            cast = (lambda t: t.float()) if name == "fp32" else (lambda t: t)
            out[name] = ring.attend(0, ring.plan(block * n, q_rope, cond_rope), c, tables[name])(cast(q), cast(k), cast(v))
        assert_provider_close(out["cpu"], out["ref"], out["fp32"], f"RingCache.attend[cpu] block {block}")
        assert torch.equal(rings["cpu"].k, rings["ref"].k) and torch.equal(rings["cpu"].v, rings["ref"].v)


def test_opcheck(cpu_fn):
    args = make_inputs(1, 6, 2, 32, 16, 11, 5)
    low = tuple(a.bfloat16() if isinstance(a, torch.Tensor) and a.dim() == 4 else a for a in args)
    torch.library.opcheck(torch.ops.liveavatar_rt.rolling_attention.default, low)
    torch.library.opcheck(torch.ops.liveavatar_rt.rolling_attention.default, args)


def test_cpu_provider_falls_back_to_reference(cpu_fn):
    """Forms the kernel does not take (fp64 tables, mixed dtypes) run the reference, unchanged."""
    args = list(make_inputs(1, 4, 2, 32, 8, 8, 3))
    args[6], args[7] = args[6].double(), args[7].double()
    assert torch.equal(cpu_fn(*args), ref(*args))
    args[4] = args[4].bfloat16()
    assert torch.equal(cpu_fn(*args), ref(*args))


def test_triton_provider_refuses_cpu():
    assert dict(OPS["rolling_attention"].candidates(torch.device("cpu"), torch.bfloat16))["triton"] == CPU_REFUSAL


# ---------------------------------------------------------------- Triton kernel, interpreted on CPU


@pytest.fixture(scope="module")
def triton_fwd():
    tl = pytest.importorskip("triton.language")
    if type(tl.zeros).__name__ != "InterpretedFunction":
        pytest.skip("triton was imported without TRITON_INTERPRET=1: run pytest with it (make test does)")
    from liveavatar_rt.kernels import rolling_attention as mod

    if type(mod._rolling_attention_fwd_kernel).__name__ != "InterpretedFunction":
        pytest.skip("liveavatar_rt.kernels were imported without TRITON_INTERPRET=1")
    return mod.rolling_attention_fwd


@pytest.mark.parametrize("shape", TRITON_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_triton_kernel_interpreted(triton_fwd, shape, dtype):
    check_provider(triton_fwd, make_inputs(*TRITON_SHAPES[shape]), dtype, f"rolling_attention[triton] {shape}")


def test_triton_kernel_strided_interpreted(triton_fwd):
    B, Lq, H, D, cap, Lc = 2, 9, 2, 32, 24, 7
    g = torch.Generator().manual_seed(3)
    q = torch.randn(B, Lq, 3, H, D, generator=g)[:, :, 1]
    ring = torch.randn(2, B, cap, H, D, generator=g)
    ck = torch.randn(Lc, B, H, D, generator=g).transpose(0, 1)
    ang = torch.rand(Lc, D // 2, generator=g) * 40
    args = (q, ring[0], ring[1], 17, ck, ck * 0.5, ang.cos(), ang.sin())
    check_provider(triton_fwd, args, torch.float32, "rolling_attention[triton] strided")


def test_package_imports_without_triton():
    """No import-time probing: importing the ops does not import triton, and with triton
    unimportable the package still resolves its tables and says why the provider is skipped."""
    code = (
        "import sys, torch\n"
        "import liveavatar_rt.ops as ops\n"
        "assert 'triton' not in sys.modules\n"
        "sys.modules['triton'] = None\n"
        "t = ops.OpTable('cpu', torch.bfloat16)\n"
        "print(dict(ops.OPS['rolling_attention'].candidates(torch.device('cuda'), torch.bfloat16))['triton'])\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = Path(__file__).resolve().parents[2]
    r = subprocess.run([sys.executable, "-c", code], cwd=root, env={**env, "PYTHONPATH": str(root)},
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().startswith("triton is not installed"), r.stdout
