"""`rolling_attention`: every provider against the reference under tests/tolerances.py's rule.

Providers: `cpu` (C++, liveavatar_rt._C; skipped with the load error when not built), called
directly (the OpTable picks it by default only on AVX-512 CPUs), and the Triton kernel through its launcher on CPU under TRITON_INTERPRET=1 (small
shapes: the interpreter is slow). Shapes: the tiny preset, 14B-per-block scaled to fit (H=40,
D=128, a block of 3 frames of S=33 tokens, ring 4 blocks, Lc = 2.5 S), odd ones (Lq = 1,
D = 48, valid < cap, cond only, no cond), strided views, and a ring that has wrapped around.

The C++ kernel's instruction-set levels (0 portable, 1 AVX-512, 2 AVX512-BF16, 3 AMX: bf16 tile
GEMMs) are each checked the same way through the test entry point `rolling_attention_isa`, on
the shapes above plus the medium preset's (a level this CPU lacks is skipped, with the reason);
the provider runs the best level (AMX where the CPU has AMX-BF16).
"""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from liveavatar_rt import _ext, config
from liveavatar_rt.benchmark.flops import cond_tokens
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


def medium_shape(h: int = 16, w: int = 16) -> tuple:
    """The medium preset's self-attention at an h x w latent: a block of 3 frames of S tokens, a
    full ring of cache_frames (12) frames, Lc conditioning tokens (1, 192, 4, 128, 768, 768, 160)."""
    cfg, stream = config.from_name("medium"), config.StreamConfig()
    S = (h // 2) * (w // 2)
    cap = stream.cache_frames * S
    return (1, stream.frames_per_block * S, cfg.num_heads, cfg.dim // cfg.num_heads, cap, cap, cond_tokens(cfg, h, w))


LEVEL_SHAPES = {**SHAPES, "medium": medium_shape()}
ISA = {"portable": 0, "avx512": 1, "avx512_bf16": 2, "amx": 3}
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
    args = strided_inputs(2, 12, 2, 64, 48, 30, 10, seed=1)
    check_provider(cpu_fn, args, dtype, "rolling_attention[cpu] strided")


def strided_inputs(B, Lq, H, D, cap, valid, Lc, seed):
    """rolling_attention's arguments as views: q from a fused [B, L, 3, H, D] buffer, the ring as
    one layer of a [layers, B, cap, H, D] cache, cond K/V with permuted batch/token strides and a
    sliced head dim."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Lq, 3, H, D, generator=g)[:, :, 0]
    ring = torch.randn(3, 2, B, cap, H, D, generator=g)
    ck = torch.randn(Lc, B, H, 2 * D, generator=g).transpose(0, 1)[..., :D]
    cv = torch.randn(Lc, B, H, D, generator=g).transpose(0, 1)
    ang = torch.rand(Lc, D // 2, generator=g) * 40
    assert not any(a.is_contiguous() for a in (q, ck, cv))
    return q, ring[1, 0], ring[1, 1], valid, ck, cv, ang.cos(), ang.sin()


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


# ---------------------------------------------------------------- instruction-set levels of the C++ kernel


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return next((set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")), set())
    except OSError:
        return set()


def _amx_expected() -> bool:
    """The kernel's AMX level needs AMX-BF16 + AVX512-BF16 and Linux >= 5.16 (arch_prctl
    ARCH_REQ_XCOMP_PERM hands a process the tile state)."""
    if not {"amx_bf16", "amx_tile", "avx512_bf16"} <= _cpu_flags() or platform.system() != "Linux":
        return False
    major, minor = (int(x) for x in platform.release().split(".")[:2])
    return (major, minor) >= (5, 16)


@pytest.fixture(scope="module")
def best_isa(cpu_fn):
    return torch.ops.liveavatar_rt.rolling_attention_best_isa.default()


def level_fn(isa: int):
    """rolling_attention at one instruction-set level (the C++ test entry point)."""
    return lambda *a: torch.ops.liveavatar_rt.rolling_attention_isa.default(*a, isa)


def require_level(best_isa: int, level: str, dtype=torch.bfloat16) -> int:
    isa = ISA[level]
    if isa > best_isa:
        pytest.skip(f"this CPU has no {level} level for rolling_attention (its best is "
                    f"{[k for k, v in ISA.items() if v == best_isa][0]}; AMX needs amx_bf16/amx_tile + avx512_bf16)")
    if dtype == torch.float32 and isa >= ISA["avx512_bf16"]:
        pytest.skip(f"fp32 inputs run the avx512 level at {level} (test_fp32_inputs_run_avx512_level)")
    return isa


def test_best_level_is_amx_where_the_cpu_has_it(best_isa):
    flags = _cpu_flags()
    if _amx_expected():
        want = ISA["amx"]
    elif "avx512_bf16" in flags and "avx512bw" in flags:
        want = ISA["avx512_bf16"]
    elif "avx512f" in flags and "avx512bw" in flags:
        want = ISA["avx512"]
    else:
        want = ISA["portable"]
    assert best_isa == want, f"rolling_attention_best_isa() = {best_isa}, this CPU's flags say {want}"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cpu_provider_runs_best_level(cpu_fn, best_isa, dtype):
    """The provider (and the plain op) is the kernel at this CPU's best level, bit for bit."""
    low = tuple(a.to(dtype) if isinstance(a, torch.Tensor) and a.dim() == 4 else a for a in make_inputs(*SHAPES["tiny"]))
    want = level_fn(best_isa)(*low)
    assert torch.equal(cpu_fn(*low), want)
    assert torch.equal(torch.ops.liveavatar_rt.rolling_attention.default(*low), want)
    assert torch.equal(level_fn(-1)(*low), want)


def test_fp32_inputs_run_avx512_level(cpu_fn, best_isa):
    """fp32 inputs have no bf16 level: asked for AVX512-BF16 or AMX they run AVX-512, unchanged."""
    require_level(best_isa, "avx512", torch.float32)
    args = make_inputs(*SHAPES["tiny_filling"])
    want = level_fn(ISA["avx512"])(*args)
    for isa in range(ISA["avx512_bf16"], best_isa + 1):
        assert torch.equal(level_fn(isa)(*args), want), f"fp32 at level {isa}"


@pytest.mark.parametrize("shape", LEVEL_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("level", ISA, ids=str)
def test_cpu_level(cpu_fn, best_isa, level, shape, dtype):
    isa = require_level(best_isa, level, dtype)
    check_provider(level_fn(isa), make_inputs(*LEVEL_SHAPES[shape]), dtype, f"rolling_attention[cpu, {level}] {shape}")


@pytest.mark.parametrize("level", ["avx512_bf16", "amx"], ids=str)
def test_cpu_level_strided(cpu_fn, best_isa, level):
    """test_cpu_provider_strided's views at the bf16 levels."""
    isa = require_level(best_isa, level)
    args = strided_inputs(2, 40, 2, 128, 300, 290, 10, seed=5)
    check_provider(level_fn(isa), args, torch.bfloat16, f"rolling_attention[cpu, {level}] strided")


@pytest.mark.parametrize("level", ["avx512_bf16", "amx"], ids=str)
def test_cpu_level_ring_wraparound(cpu_fn, best_isa, level):
    """A full ring whose oldest token sits mid-buffer (the tokens in time order are ring[slot:]
    then ring[:slot]) attends as the same ring unwrapped: within the provider rule of the
    reference in time order (the kernel sees another key order: another summation order)."""
    isa = require_level(best_isa, level)
    B, Lq, H, D, cap, valid, Lc = medium_shape()
    q, rk, rv, _, ck, cv, cos, sin = (a.bfloat16() if isinstance(a, torch.Tensor) and a.dim() == 4 else a
                                      for a in make_inputs(B, Lq, H, D, cap, valid, Lc, seed=6))
    slot = 331
    out = level_fn(isa)(q, rk.roll(slot, 1), rv.roll(slot, 1), cap, ck, cv, cos, sin)
    timeline = (q, rk, rv, cap, ck, cv, cos, sin)
    assert_provider_close(out, ref(*timeline), ref(*(a.float() if isinstance(a, torch.Tensor) else a for a in timeline)),
                          f"rolling_attention[cpu, {level}] wrapped ring")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cpu_level_ring_wraparound_through_ring_cache(cpu_fn, best_isa, dtype):
    """test_ring_wraparound_through_ring_cache with the AMX level named explicitly."""
    require_level(best_isa, "amx")
    test_ring_wraparound_through_ring_cache(level_fn(ISA["amx"]), dtype)


@pytest.mark.parametrize("level", ISA, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_fp8_kernel_equals_kernel_on_dequantized_at_each_level(cpu_fn, best_isa, level, dtype):
    """rolling_attention_fp8's kernel dequantizes rows as it gathers them, then takes the same
    path: bit-equal to rolling_attention's kernel on the dequantized tensors at every level
    (test_rolling_attention_fp8.py checks the default level)."""
    from tests.ops.test_rolling_attention_fp8 import dequantized, fp8_inputs

    isa = require_level(best_isa, level, dtype)
    for shape in ("14b_scaled", "lq1_d48", "medium"):
        args = fp8_inputs(*make_inputs(*LEVEL_SHAPES[shape]), dtype=dtype)
        out = torch.ops.liveavatar_rt.rolling_attention_fp8_isa.default(*args, isa)
        assert torch.equal(out, level_fn(isa)(*dequantized(args))), f"fp8 vs dequantized {shape} {dtype} {level}"


def test_opcheck(cpu_fn):
    args = make_inputs(1, 6, 2, 32, 16, 11, 5)
    low = tuple(a.bfloat16() if isinstance(a, torch.Tensor) and a.dim() == 4 else a for a in args)
    torch.library.opcheck(torch.ops.liveavatar_rt.rolling_attention.default, low)
    torch.library.opcheck(torch.ops.liveavatar_rt.rolling_attention.default, args)
    # the per-level test entry point has a fake too (shape-only tracing of the level tests)
    torch.library.opcheck(torch.ops.liveavatar_rt.rolling_attention_isa.default, (*low, -1))


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
