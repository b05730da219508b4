"""Microbenchmarks of the fused ops: each available provider vs the reference, same run.

    .venv/bin/python -m pytest bench/test_ops_bench.py --benchmark-only      # time them
    .venv/bin/python -m pytest bench/test_ops_bench.py --benchmark-disable   # run once, check only

Ops x shapes x dtypes (fp32 and the working dtype bf16) x providers (`ref` plus every provider
whose `supports` accepts this machine; the others are skipped with their refusal reason).
Shapes: the tiny preset and a 14B block scaled to fit (H=40, D=128, S = 1056/8 = 132 tokens per
latent frame, a block of 3 frames, a ring of 4 blocks, Lc = 2.5 S); rolling_attention also at
the medium preset's shape (test_rolling_attention_medium: bf16, 1 and 2 threads, the `cpu`
provider at its default level and at each bf16 instruction-set level, and the reference, in the
same run; extra_info also holds the load average, the machine being shared); the block's small ops
(gated_residual, layer_norm, gelu_tanh, attention) at the tiny block and a 14B row width. Each test first checks the
provider against the reference (tests/tolerances.py's rule), then times it. extra_info holds
time_ms (min over rounds: the least disturbed run on a shared machine), GFLOP/s (attention,
4 B H Lq Lk D) or GB/s (qk_norm_rope: q, k read, 3 outputs written) and speedup_vs_ref (ratio of
the minima in this run); a summary table is printed at the end of the module.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from liveavatar_rt import config  # noqa: E402
from liveavatar_rt.benchmark.flops import cond_tokens  # noqa: E402
from liveavatar_rt.ops import OPS  # noqa: E402
from tests.tolerances import assert_provider_close  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DTYPES = [torch.float32, torch.bfloat16]
RA_SHAPES = {"tiny": (1, 96, 2, 64, 384, 384, 80), "14b_scaled": (1, 396, 40, 128, 1584, 1584, 330)}
QK_SHAPES = {"tiny": (1, 96, 2, 64), "14b_scaled": (1, 396, 40, 128)}
PROVIDERS = ["ref", "cpu", "triton"]
_REF_MIN: dict[tuple, float] = {}
_ROWS: list[tuple] = []


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def _ra_inputs(B, Lq, H, D, cap, valid, Lc, dtype):
    g = torch.Generator().manual_seed(0)
    t = [torch.randn(B, n, H, D, generator=g).to(dtype).to(DEVICE) for n in (Lq, cap, cap, Lc, Lc)]
    ang = torch.rand(Lc, D // 2, generator=g) * 40
    return (t[0], t[1], t[2], valid, t[3], t[4], ang.cos().to(DEVICE), ang.sin().to(DEVICE))


def _qk_inputs(B, L, H, D, dtype):
    g = torch.Generator().manual_seed(0)
    C = H * D
    q, k = ((torch.randn(B, L, C, generator=g) * 3).to(dtype).to(DEVICE) for _ in range(2))
    w = [torch.randn(C, generator=g).to(DEVICE) for _ in range(2)]
    ang = torch.rand(L, D // 2, generator=g) * 40
    return (q, k, w[0], w[1], 1e-6, ang.cos().to(DEVICE), ang.sin().to(DEVICE), H)


def _fp32(args):
    return tuple(a.float() if isinstance(a, torch.Tensor) else a for a in args)


def _min_time(fn, args, rounds: int) -> float:
    fn(*args)
    best = float("inf")
    for _ in range(rounds):
        _sync()
        t0 = time.perf_counter()
        fn(*args)
        _sync()
        best = min(best, time.perf_counter() - t0)
    return best


def _run(benchmark, op_name, shape, dtype, provider, args, work, unit, rounds, fn=None):
    """fn: time this callable (the caller checked it) under the name `provider`."""
    op = OPS[op_name]
    if fn is None and provider == "ref":
        fn = op.reference
    elif fn is None:
        why = dict(op.candidates(DEVICE, dtype)).get(provider, f"provider {provider!r} is not registered")
        if why is not None:
            pytest.skip(f"{op_name}[{provider}]: {why}")
        fn = next(p.fn for p in op.providers if p.name == provider)
        outs, ref_low, ref_fp32 = fn(*args), op.reference(*args), op.reference(*_fp32(args))
        for o, rl, r32 in zip(*(x if isinstance(x, tuple) else (x,) for x in (outs, ref_low, ref_fp32))):
            assert_provider_close(o, rl, r32, f"{op_name}[{provider}] {shape}")

    def call():
        fn(*args)
        _sync()

    benchmark.pedantic(call, rounds=rounds, iterations=1, warmup_rounds=1)
    if benchmark.stats is None:  # --benchmark-disable: a correctness run
        return
    key = (op_name, shape, dtype)
    t = benchmark.stats.stats.min
    if provider == "ref":
        _REF_MIN[key] = t
    elif key not in _REF_MIN:
        _REF_MIN[key] = _min_time(op.reference, args, rounds)
    speedup = _REF_MIN[key] / t
    rate = work / t / 1e9
    benchmark.extra_info.update({
        "time_ms": round(t * 1e3, 3), "median_ms": round(benchmark.stats.stats.median * 1e3, 3), unit: round(rate, 2),
        "speedup_vs_ref": round(speedup, 2), "threads": torch.get_num_threads(), "device": str(DEVICE)})
    _ROWS.append((op_name, shape, str(dtype).removeprefix("torch."), provider, t * 1e3, rate, unit, speedup))


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", RA_SHAPES)
def test_rolling_attention(benchmark, shape, dtype, provider):
    B, Lq, H, D, cap, valid, Lc = RA_SHAPES[shape]
    args = _ra_inputs(B, Lq, H, D, cap, valid, Lc, dtype)
    flops = 4 * B * H * Lq * (valid + Lc) * D
    _run(benchmark, "rolling_attention", shape, dtype, provider, args, flops, "GFLOP/s", 30 if shape == "tiny" else 5)


def _medium_ra_shape(h: int = 16, w: int = 16) -> tuple:
    """The medium preset's rolling attention at an h x w latent: (1, 192, 4, 128, 768, 768, 160)
    = a block of 3 frames of S = 64 tokens, a full ring of 12 frames, Lc conditioning tokens."""
    cfg, stream = config.from_name("medium"), config.StreamConfig()
    S = (h // 2) * (w // 2)
    cap = stream.cache_frames * S
    return (1, stream.frames_per_block * S, cfg.num_heads, cfg.dim // cfg.num_heads, cap, cap, cond_tokens(cfg, h, w))


# The C++ kernel's bf16 instruction-set levels (csrc/cpu/rolling_attention_kernels.h), run through
# its test entry point; `cpu` is the provider itself (its default: this CPU's best level).
RA_LEVELS = {"cpu@avx512_bf16": 2, "cpu@amx": 3}


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("provider", ["ref", "cpu", *RA_LEVELS])
def test_rolling_attention_medium(benchmark, provider, threads):
    if DEVICE.type != "cpu":
        pytest.skip("a CPU kernel benchmark (the thread counts are torch's CPU threads)")
    B, Lq, H, D, cap, valid, Lc = _medium_ra_shape()
    args = _ra_inputs(B, Lq, H, D, cap, valid, Lc, torch.bfloat16)
    flops = 4 * B * H * Lq * (valid + Lc) * D
    op = OPS["rolling_attention"]
    isa = None
    if provider in RA_LEVELS:
        why = dict(op.candidates(DEVICE, torch.bfloat16)).get("cpu")
        if why is not None:
            pytest.skip(f"rolling_attention[cpu]: {why}")
        isa = RA_LEVELS[provider]
        best = torch.ops.liveavatar_rt.rolling_attention_best_isa.default()
        if isa > best:
            pytest.skip(f"this CPU has no {provider.split('@')[1]} level (its best is {best})")

        def fn(*a):
            return torch.ops.liveavatar_rt.rolling_attention_isa.default(*a, isa)

        assert_provider_close(fn(*args), op.reference(*args), op.reference(*_fp32(args)), f"rolling_attention[{provider}]")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        shape = f"medium/{threads}t"
        if isa is None:
            _run(benchmark, "rolling_attention", shape, torch.bfloat16, provider, args, flops, "GFLOP/s", 300)
        else:
            _run(benchmark, "rolling_attention", shape, torch.bfloat16, provider, args, flops, "GFLOP/s", 300, fn=fn)
        if benchmark.stats is not None:
            benchmark.extra_info.update({"shape": "B, Lq, H, D, cap, valid, Lc = " + str(_medium_ra_shape()),
                                         "isa": isa if isa is not None else (
                                             torch.ops.liveavatar_rt.rolling_attention_best_isa.default()
                                             if provider == "cpu" else None),
                                         "loadavg_1m": round(os.getloadavg()[0], 2)})
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", QK_SHAPES)
def test_qk_norm_rope(benchmark, shape, dtype, provider):
    B, L, H, D = QK_SHAPES[shape]
    args = _qk_inputs(B, L, H, D, dtype)
    nbytes = 5 * B * L * H * D * args[0].element_size()
    _run(benchmark, "qk_norm_rope", shape, dtype, provider, args, nbytes, "GB/s", 30 if shape == "tiny" else 10)


# The block's small ops at the tiny preset's shapes (one [192, 128] block of 3 frames; the
# FFN's [192, 256]; cross-attention over 16 text tokens) and a 14B-like row width.
BLOCK_SHAPES = {"tiny": (1, 3, 64, 128), "14b_rows": (1, 3, 44, 5120)}


def _block_inputs(op, shape, dtype):
    g = torch.Generator().manual_seed(0)
    B, F, S, C = shape

    def rnd(*s):
        return torch.randn(*s, generator=g).to(DEVICE)

    if op == "gated_residual":
        return (rnd(B, F, S, C), rnd(B, F, S, C).to(dtype), rnd(B, F, 1, C)), 3 * B * F * S * C * 4
    if op == "layer_norm":
        x = rnd(B, F * S, C).to(dtype)
        return (x, None, None, 1e-6), B * F * S * C * (x.element_size() + 4)
    if op == "gelu_tanh":
        x = rnd(B, F * S, 2 * C).to(dtype)
        return (x,), 2 * x.numel() * x.element_size()
    H = 2 if C == 128 else 40  # attention: cross-attention of the block's queries over 16 keys
    q, k, v = (rnd(B, n, H, C // H).to(dtype) for n in (F * S, 16, 16))
    return (q, k, v), 4 * B * H * F * S * 16 * (C // H)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", BLOCK_SHAPES)
@pytest.mark.parametrize("op", ["gated_residual", "layer_norm", "gelu_tanh", "attention"])
def test_block_ops(benchmark, op, shape, dtype, provider):
    args, work = _block_inputs(op, BLOCK_SHAPES[shape], dtype)
    unit = "GFLOP/s" if op == "attention" else "GB/s"
    _run(benchmark, op, shape, dtype, provider, args, work, unit, 50 if shape == "tiny" else 10)


@pytest.fixture(scope="module", autouse=True)
def summary_table(request):
    yield
    if not _ROWS:
        return
    lines = [f"\nops microbenchmarks on {DEVICE}, {torch.get_num_threads()} threads (time = min over rounds; "
             "speedup = reference min / provider min, this run)",
             f"{'op':<18}{'shape':<12}{'dtype':<10}{'provider':<17}{'time ms':>10}{'rate':>16}{'speedup':>9}"]
    for op, shape, dt, prov, ms, rate, unit, sp in _ROWS:
        lines.append(f"{op:<18}{shape:<12}{dt:<10}{prov:<17}{ms:>10.3f}{rate:>9.2f} {unit:<6}{sp:>8.2f}x")
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print("\n".join(lines))
