"""`fused_linear` (several linears of one input): the `native` provider (one GEMM against the
concatenated weights, cached) against the reference under tests/tolerances.py's rule; the
cache follows in-place weight updates; under autograd it keeps gradients flowing."""
from __future__ import annotations

import pytest
import torch

from liveavatar_rt.ops import OPS, OpTable
from liveavatar_rt.ops.linear import fused_linear as ref
from tests.tolerances import assert_provider_close

native = next(p.fn for p in OPS["fused_linear"].providers if p.name == "native")


def _inputs(seed=0, n=3, C=128, L=192, bias=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, L, C, generator=g).bfloat16()
    ws = [(torch.randn(C, C, generator=g) / C**0.5).bfloat16() for _ in range(n)]
    bs = [torch.randn(C, generator=g).bfloat16() if bias else None for _ in range(n)]
    return x, ws, bs


@pytest.mark.parametrize("n,C,L,bias", [(3, 128, 192, True), (2, 128, 15, True), (3, 48, 7, False), (2, 64, 1, True)])
def test_native_within_provider_rule(n, C, L, bias):
    x, ws, bs = _inputs(n=n, C=C, L=L, bias=bias)
    outs = native(x, ws, bs, torch.bfloat16)
    refs = ref(x, ws, bs, torch.bfloat16)
    refs32 = ref(x.float(), [w.float() for w in ws], [None if b is None else b.float() for b in bs], torch.float32)
    assert len(outs) == n
    for i, (o, r, r32) in enumerate(zip(outs, refs, refs32)):
        assert o.dtype == torch.bfloat16 and o.shape == r.shape
        assert_provider_close(o, r, r32, f"fused_linear[native] output {i}")


def test_cache_follows_in_place_weight_updates():
    x, ws, bs = _inputs(seed=1)
    before = native(x, ws, bs, torch.bfloat16)[1]
    with torch.no_grad():
        ws[1].mul_(-1)  # bumps the version: the concatenation must be rebuilt
    after = native(x, ws, bs, torch.bfloat16)[1]
    expect = ref(x, ws, bs, torch.bfloat16)[1]
    assert not torch.equal(before, after)
    assert ((after.float() - expect.float()).norm() / expect.float().norm()).item() < 1e-2


def test_gradients_flow_under_autograd():
    x, ws, bs = _inputs(seed=2, n=2)
    ws = [w.float().requires_grad_(True) for w in ws]
    outs = native(x.float(), ws, [b.float() for b in bs], torch.bfloat16)
    sum(o.float().sum() for o in outs).backward()
    assert all(w.grad is not None and w.grad.abs().sum() > 0 for w in ws)


def test_op_table_choice():
    assert OpTable("cpu", torch.bfloat16).chosen["fused_linear"] == "native"
    assert OpTable("cpu", torch.float32).chosen["fused_linear"] == "ref"
    assert OpTable("cpu", torch.bfloat16, force="ref").chosen["fused_linear"] == "ref"
