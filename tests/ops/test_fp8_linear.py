"""The `fp8_linear` op (ops/fp8_linear.py): the published per-tensor E4M3 rule, its reference and
the `scaled_mm` provider (torch._scaled_mm, as the published code calls it)."""
from __future__ import annotations

import pytest
import torch

from liveavatar_rt.ops import OPS, OpTable
from liveavatar_rt.ops.fp8_linear import E4M3, E4M3_MAX, _scaled_mm_linear, _scaled_mm_supports, fp8_linear, quantize_e4m3


def _bf16_ulp(y: torch.Tensor) -> torch.Tensor:
    """One bf16 unit in the last place at each |y| (8 significant bits)."""
    return torch.exp2(torch.floor(torch.log2(y.abs().clamp(min=1e-30))) - 7)


@pytest.mark.parametrize("amax", [3.7, 900.0])
def test_quantize_uses_the_whole_e4m3_range_and_rounds_to_nearest(amax):
    g = torch.Generator().manual_seed(0)
    t = torch.randn(64, 96, generator=g)
    t = (t / t.abs().max() * amax).to(torch.bfloat16)
    t8, inv = quantize_e4m3(t)
    assert t8.dtype == E4M3 and inv.dtype == torch.float32 and inv.dim() == 0
    assert t8.float().abs().max().item() == E4M3_MAX  # the largest |t| lands on 448
    back = t8.float() * inv
    # E4M3 keeps 3 mantissa bits: round to nearest is within 1/16 relative for normal values
    normal = (t.float().abs() / inv) >= 2 ** -6
    rel = ((back - t.float()).abs() / t.float().abs())[normal]
    assert rel.max().item() <= 2 ** -4 + 1e-6


def test_quantize_caps_the_scale_for_small_tensors_and_survives_zeros():
    t = torch.full((4, 8), 0.25, dtype=torch.bfloat16)
    t8, inv = quantize_e4m3(t)
    assert inv.item() == pytest.approx(1 / E4M3_MAX)  # 448 / 0.25 = 1792 is capped at 448
    assert torch.all(t8.float() == 112.0)
    z8, zinv = quantize_e4m3(torch.zeros(3, 5))
    assert torch.all(z8.float() == 0) and torch.isfinite(zinv)


def _case(tokens=40, n_in=128, n_out=96, dtype=torch.bfloat16, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, tokens, n_in, generator=g).to(dtype)
    w8, ws = quantize_e4m3((torch.randn(n_out, n_in, generator=g) * 0.05).to(torch.bfloat16))
    b = (torch.randn(n_out, generator=g) * 0.1).to(torch.bfloat16)
    return x, w8, ws, b


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_reference_is_the_dequantized_product_rounded_once_to_bf16(dtype):
    x, w8, ws, b = _case(dtype=dtype)
    y = fp8_linear(x, w8, ws, b)
    assert y.dtype == dtype and y.shape == (1, 40, 96)  # the published layer returns x's dtype
    assert torch.equal(y, y.to(torch.bfloat16).to(dtype))  # ... holding bf16 values
    x8, xs = quantize_e4m3(x.reshape(-1, 128))
    exact = (x8.double() * xs.double()) @ (w8.double() * ws.double()).t() + b.double()
    err = (y.reshape(-1, 96).double() - exact).abs()
    assert torch.all(err <= _bf16_ulp(exact.float()).double() * 0.5 + 1e-6)


def test_reference_differs_from_a_bf16_linear():
    """fp8 is not bf16 in disguise: activations and weights lose bits to E4M3 (~3 % here)."""
    x, w8, ws, b = _case()
    w = (w8.float() * ws).to(torch.bfloat16)
    y = fp8_linear(x, w8, ws, b).float()
    y_bf16 = torch.nn.functional.linear(x.float(), w.float(), b.float())
    rel = ((y - y_bf16).norm() / y_bf16.norm()).item()
    assert 0.005 < rel < 0.1


@pytest.mark.parametrize("tokens,n_in,n_out", [(40, 128, 96), (7, 64, 32), (1, 32, 16)])
def test_scaled_mm_matches_the_reference(tokens, n_in, n_out):
    x, w8, ws, b = _case(tokens, n_in, n_out)
    for bias in (b, None):
        ref = fp8_linear(x, w8, ws, bias).float()
        got = _scaled_mm_linear(x, w8, ws, bias).float()
        assert got.shape == ref.shape
        # same products, another fp32 summation order: at most one bf16 rounding step apart
        assert torch.all((got - ref).abs() <= _bf16_ulp(ref) + 1e-6)


def test_cpu_resolves_to_the_reference_with_the_reason():
    why = dict(OPS["fp8_linear"].candidates(torch.device("cpu"), torch.bfloat16))["scaled_mm"]
    assert "scalar loop" in why
    assert OpTable("cpu", torch.bfloat16).chosen["fp8_linear"] == "ref"


def test_cuda_before_sm89_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert "8.9" in _scaled_mm_supports(torch.device("cuda", 0), torch.bfloat16)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert _scaled_mm_supports(torch.device("cuda", 0), torch.bfloat16) is None


@pytest.mark.gpu
@pytest.mark.parametrize("tokens,n_in,n_out", [(3168, 5120, 5120), (3168, 5120, 13824), (3168, 13824, 5120)])
def test_scaled_mm_on_cuda_matches_the_reference_at_14b_shapes(tokens, n_in, n_out):
    """One 14B block's GEMM shapes (384x704 -> 48x88 latent -> 1056 tokens per frame, 3168 per 3-frame block)."""
    if _scaled_mm_supports(torch.device("cuda"), torch.bfloat16) is not None:
        pytest.skip(_scaled_mm_supports(torch.device("cuda"), torch.bfloat16))
    x, w8, ws, b = (t.cuda() for t in _case(tokens, n_in, n_out))
    table = OpTable("cuda", torch.bfloat16)
    assert table.chosen["fp8_linear"] == "scaled_mm"
    ref = fp8_linear(x, w8, ws, b).float()
    got = table.fp8_linear(x, w8, ws, b).float()
    # fast accumulation on tensor cores: allow a few bf16 steps, and bound the overall error
    assert ((got - ref).norm() / ref.norm()).item() < 2e-3
