"""Reference ops against straightforward formulations, and the `native` linear provider
against the reference under the shared tolerance rule."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from liveavatar_rt.ops import OPS, OpTable, patch_conv
from liveavatar_rt.ops.registry import define
from tests.tolerances import assert_provider_close

SHAPES = [(1, 96, 128, 128), (2, 7, 67, 33), (1, 3, 5120, 64)]  # tiny, odd, 14B row width


@pytest.mark.parametrize("B,L,K,N", SHAPES)
def test_native_linear_within_provider_tolerance(B, L, K, N):
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(B, L, K, generator=g), torch.randn(N, K, generator=g) / K**0.5, torch.randn(N, generator=g)
    x = x.transpose(0, 1).contiguous().transpose(0, 1)  # strided input
    ref = OPS["linear"].reference
    fp32 = ref(x.bfloat16().float(), w.bfloat16().float(), b.bfloat16().float(), torch.float32)
    native = OpTable("cpu", torch.bfloat16).linear
    assert_provider_close(native(x, w, b, torch.bfloat16), ref(x, w, b, torch.bfloat16), fp32, "linear[native]")


def test_reference_linear_rounds_once():
    """bf16 reference = one rounding of the exact fp32 sum of bf16 inputs (+ bias)."""
    x = torch.tensor([[1.0, 2.0 ** -9]])
    w = torch.tensor([[1.0, 1.0]])
    b = torch.tensor([2.0 ** -9])
    # exact sum 1 + 2^-8 is representable in bf16 only as 1 + 2^-7 or 1; fp32 sum then one rounding
    out = OPS["linear"].reference(x, w, b, torch.bfloat16)
    assert out.dtype == torch.bfloat16
    assert out.item() == torch.tensor(1 + 2.0 ** -8).bfloat16().item()


@pytest.mark.parametrize("patch", [(1, 2, 2), (2, 4, 4), (4, 8, 8)])
def test_patch_conv_equals_conv3d(patch):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 16, 4, 8, 16, generator=g)
    w, b = torch.randn(32, 16, *patch, generator=g), torch.randn(32, generator=g)
    ops = OpTable("cpu", torch.float32, force="ref")
    torch.testing.assert_close(patch_conv(x, w, b, torch.float32, ops), F.conv3d(x, w, b, stride=patch), rtol=1e-4, atol=1e-4)  # 4096-term fp32 sums
    with pytest.raises(ValueError, match="not divisible"):
        patch_conv(x[..., :7], w, b, torch.float32, ops)


def test_rope_apply_is_complex_rotation():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 5, 2, 8, generator=g)
    ang = torch.rand(5, 4, generator=g, dtype=torch.float64) * 6
    out = OPS["rope_apply"].reference(x, ang.cos(), ang.sin())
    want = torch.view_as_real(torch.view_as_complex(x.double().reshape(1, 5, 2, 4, 2)) * torch.polar(torch.ones_like(ang), ang)[None, :, None])
    torch.testing.assert_close(out, want.reshape(1, 5, 2, 8).float())


def test_attention_is_exact_softmax():
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, n, 2, 16, generator=g).bfloat16() for n in (5, 9, 9))
    out = OPS["attention"].reference(q, k, v)
    s = torch.einsum("bqhd,bkhd->bhqk", q.float(), k.float()) / 4.0
    want = torch.einsum("bhqk,bkhd->bqhd", s.softmax(-1), v.float()).bfloat16()
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, want, rtol=0, atol=2 ** -7)


def test_registry_force_and_refusal(monkeypatch):
    assert OpTable("cpu", torch.bfloat16, force="ref").chosen["linear"] == "ref"
    assert OpTable("cpu", torch.bfloat16, force={"linear": "native"}).chosen["linear"] == "native"
    assert OpTable("cpu", torch.float32).chosen["linear"] == "ref"  # native refuses fp32, says why
    assert "no gain" in dict(OPS["linear"].candidates(torch.device("cpu"), torch.float32))["native"]
    with pytest.raises(RuntimeError, match="refuses"):
        OpTable("cpu", torch.float32, force={"linear": "native"})
    with pytest.raises(ValueError, match="unknown provider"):
        OpTable("cpu", torch.float32, force={"linear": "nope"})
    monkeypatch.setenv("LIVEAVATAR_RT_PROVIDER", "linear=ref")
    assert OpTable("cpu", torch.bfloat16).chosen["linear"] == "ref"
    with pytest.raises(ValueError, match="defined twice"):
        define("linear")(lambda: None)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape,kernel,stride", [((1, 8, 3, 10, 12), (3, 3, 3), 1), ((1, 16, 4, 16, 16), (1, 2, 2), (1, 2, 2)),
                                                 ((2, 5, 2, 7, 9), (1, 3, 3), 1)])
def test_conv3d_mkldnn_within_provider_tolerance(dtype, shape, kernel, stride):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(*shape, generator=g)
    w = torch.randn(6, shape[1], *kernel, generator=g) / 4
    b = torch.randn(6, generator=g)
    ref = OPS["conv3d"].reference
    fp32 = ref(x.to(dtype).float(), w.to(dtype).float(), b.to(dtype).float(), stride, 0, torch.float32)
    out = OpTable("cpu", dtype).conv3d(x, w, b, stride, 0, dtype)
    assert OpTable("cpu", dtype).chosen["conv3d"] == "mkldnn"
    assert out.dtype == dtype
    assert_provider_close(out, ref(x, w, b, stride, 0, dtype), fp32, "conv3d[mkldnn]")


def test_conv2d_mkldnn_matches_reference():
    g = torch.Generator().manual_seed(5)
    x, w, b = torch.randn(3, 4, 9, 11, generator=g), torch.randn(5, 4, 3, 3, generator=g), torch.randn(5, generator=g)
    out = OpTable("cpu", torch.float32).conv2d(x, w, b, 1, 1, torch.float32)
    torch.testing.assert_close(out, OPS["conv2d"].reference(x, w, b, 1, 1, torch.float32), rtol=1e-5, atol=1e-5)


def test_vae_rms_norm_chansum_matches_reference():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(1, 24, 3, 8, 10, generator=g).bfloat16()
    x[:, :, 0, 0, 0] = 0  # the eps clamp
    gamma = torch.randn(24, 1, 1, 1, generator=g)
    out = OpTable("cpu", torch.bfloat16).vae_rms_norm(x, gamma)
    torch.testing.assert_close(out, OPS["vae_rms_norm"].reference(x, gamma), rtol=1e-5, atol=1e-5)
    assert torch.isfinite(out).all()
