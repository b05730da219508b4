"""The CUDA `modulate` kernel (csrc/cuda/, ops/cuda_providers.py) through OpTable on CUDA.

Bit-identical to the reference (`torch.equal`). The gpu tests need a CUDA device and an
extension built with its CUDA kernels (setup.py: torch with CUDA and CUDA_HOME set); the refusal
tests run everywhere.
"""
from __future__ import annotations

import pytest
import torch

from liveavatar_rt import _ext
from liveavatar_rt.ops import OPS, OpTable, cuda_providers
from liveavatar_rt.ops.modulate import modulate as modulate_ref

DTYPES = [torch.float32, torch.bfloat16]


def test_refused_off_cuda():
    why = dict(OPS["modulate"].candidates(torch.device("cpu"), torch.bfloat16))["cuda"]
    assert why == "device cpu is not CUDA"
    assert OpTable("cpu", torch.bfloat16).chosen["modulate"] != "cuda"


def test_refused_without_cuda_kernels():
    if not _ext.available():
        why = cuda_providers.supports(torch.device("cuda"), torch.bfloat16)
        assert why == f"liveavatar_rt._C not built: {_ext.load_error()}"
        return
    if cuda_providers.has_cuda_kernels():
        pytest.skip("this build has the CUDA kernels")
    assert cuda_providers.supports(torch.device("cuda"), torch.bfloat16) == cuda_providers.NO_CUDA_KERNELS
    with pytest.raises(RuntimeError, match="without CUDA kernels"):
        OpTable("cuda", torch.bfloat16, force={"modulate": "cuda"})


@pytest.fixture(scope="module")
def cuda_modulate():
    why = cuda_providers.supports(torch.device("cuda"), torch.bfloat16)
    if why is not None:
        pytest.skip(f"CUDA modulate provider refused: {why}")
    return OpTable("cuda", torch.bfloat16)


def _randn(*shape, seed, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).cuda()


@pytest.mark.gpu
@pytest.mark.parametrize("xt", DTYPES)
@pytest.mark.parametrize("ot", DTYPES)
@pytest.mark.parametrize("form", ["block", "frames3d", "token", "sample", "batch_bcast", "odd"])
def test_matches_reference(cuda_modulate, xt, ot, form):
    assert cuda_modulate.chosen["modulate"] == "cuda", cuda_modulate
    B, F, S, C = 2, 3, 8, 128
    if form == "block":  # model/block.py: x [B, F, S, C], shift/scale [B, F, 1, C]
        x, sh, sc = _randn(B, F, S, C, seed=1), _randn(B, F, 1, C, seed=2), _randn(B, F, 1, C, seed=3)
    elif form == "frames3d":  # the kernel's own per-frame form
        x, sh, sc = _randn(B, F * S, C, seed=1), _randn(B, F, C, seed=2), _randn(B, F, C, seed=3)
    elif form == "token":
        x, sh, sc = _randn(B, F * S, C, seed=1), _randn(B, F * S, C, seed=2), _randn(B, F * S, C, seed=3)
    elif form == "sample":
        x, sh, sc = _randn(B, F * S, C, seed=1), _randn(B, 1, C, seed=2), _randn(B, 1, C, seed=3)
    elif form == "batch_bcast":
        x, sh, sc = _randn(B, F, S, C, seed=1), _randn(1, F, 1, C, seed=2), _randn(1, F, 1, C, seed=3)
    else:  # odd channel count, strided x
        x = _randn(B, F * S, 2 * 77, seed=1)[..., ::2]
        sh, sc = _randn(B, F * S, 77, seed=2), _randn(B, F * S, 77, seed=3)
    x = x.to(xt)
    out = cuda_modulate.modulate(x, sh, sc, ot)
    ref = modulate_ref(x, sh, sc, ot) if form != "frames3d" else modulate_ref(
        x, sh.repeat_interleave(S, dim=1), sc.repeat_interleave(S, dim=1), ot)
    assert out.device.type == "cuda" and out.dtype == ref.dtype and out.shape == ref.shape
    assert torch.equal(out, ref), f"{int((out != ref).sum())} of {out.numel()} differ"


@pytest.mark.gpu
def test_out_variant(cuda_modulate):
    x, sh, sc = _randn(2, 24, 64, seed=1).bfloat16(), _randn(2, 3, 64, seed=2), _randn(2, 3, 64, seed=3)
    out = torch.empty(2, 24, 64, device="cuda")
    torch.ops.liveavatar_rt.modulate_out(out, x, sh, sc)
    ref = modulate_ref(x, sh.repeat_interleave(8, dim=1), sc.repeat_interleave(8, dim=1), torch.float32)
    assert torch.equal(out, ref)
