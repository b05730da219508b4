"""`linear` provider `onednn_packed` (ops/linear_packed.py): bit-equal to the native GEMM it
replaces (bf16) and to the reference (fp32 calls), and its weight cache never serves a stale or
dead weight."""
from __future__ import annotations

import gc

import pytest
import torch

from liveavatar_rt.ops import OPS, OpTable
from liveavatar_rt.ops.linear import _native_linear, linear as ref_linear
from liveavatar_rt.ops.linear_packed import _cache, _packed_linear, _supports, cached_weights

pytestmark = pytest.mark.skipif(_supports(torch.device("cpu"), torch.bfloat16) is not None,
                                reason=str(_supports(torch.device("cpu"), torch.bfloat16)))

g = torch.Generator().manual_seed(0)


def w_b(out=96, inp=64):
    return torch.randn(out, inp, generator=g).bfloat16(), torch.randn(out, generator=g).bfloat16()


def test_chosen_for_bf16_on_cpu_and_refused_elsewhere():
    assert OpTable("cpu", torch.bfloat16).chosen["linear"] == "onednn_packed"
    assert "bf16" in _supports(torch.device("cpu"), torch.float32)
    assert "not CPU" in _supports(torch.device("cuda"), torch.bfloat16)
    assert any(p.name == "onednn_packed" for p in OPS["linear"].providers)


@pytest.mark.parametrize("shape", [(1, 64), (7, 64), (2, 192, 64), (1, 3, 64, 64)])
@pytest.mark.parametrize("bias", [True, False])
def test_bf16_equals_the_native_gemm(shape, bias):
    w, b = w_b()
    b = b if bias else None
    x = torch.randn(*shape, generator=g)  # fp32 input: rounded to bf16 first, as the reference rule says
    for _ in range(2):  # packs, then reuses the packed weight
        out = _packed_linear(x, w, b, torch.bfloat16)
        assert out.dtype == torch.bfloat16 and out.shape == (*shape[:-1], 96)
        assert torch.equal(out, _native_linear(x, w, b, torch.bfloat16))


def test_fp32_calls_equal_the_reference():
    """The published fp32 layers (time embedding, audio encoder) on bf16 weights."""
    w, b = w_b()
    x = torch.randn(5, 64, generator=g)
    for _ in range(2):
        assert torch.equal(_packed_linear(x, w, b, torch.float32), ref_linear(x, w, b, torch.float32))


def test_a_weight_changed_in_place_is_packed_again():
    w, b = w_b()
    x = torch.randn(4, 64, generator=g).bfloat16()
    before = _packed_linear(x, w, b, torch.bfloat16)
    with torch.no_grad():
        w.mul_(2)  # e.g. a LoRA merge into the loaded weight
    after = _packed_linear(x, w, b, torch.bfloat16)
    assert torch.equal(after, _native_linear(x, w, b, torch.bfloat16)) and not torch.equal(before, after)
    assert torch.equal(_packed_linear(x, w, b, torch.float32), ref_linear(x, w, b, torch.float32))


def test_views_hit_the_cache_and_dead_weights_leave_it():
    w = torch.randn(96, 4, 4, 4, generator=g).bfloat16()  # a patch conv's weight, reshaped per call
    x = torch.randn(3, 64, generator=g)
    ours = lambda: {k for k in _cache if k[0] == id(w)}  # noqa: E731  (entries keyed by w itself)
    for _ in range(3):
        out = _packed_linear(x, w.reshape(96, -1), None, torch.bfloat16)
        _packed_linear(x, w.reshape(96, -1), None, torch.float32)
    assert sorted(k[-1] for k in ours()) == ["fp32", "packed"]  # one entry per form, reused
    assert torch.equal(out, _native_linear(x, w.reshape(96, -1), None, torch.bfloat16))
    keys, n = ours(), cached_weights()
    del w
    gc.collect()
    assert not keys & set(_cache) and cached_weights() <= n - 2


def test_gradients_take_the_native_gemm():
    w, b = w_b()
    w.requires_grad_(True)
    x = torch.randn(4, 64, generator=g).bfloat16()
    out = _packed_linear(x, w, b, torch.bfloat16)
    out.float().sum().backward()
    assert w.grad is not None and torch.equal(out.detach(), _native_linear(x, w.detach(), b, torch.bfloat16))
