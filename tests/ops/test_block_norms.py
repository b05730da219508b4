"""The block's norm chains (ops/block_norms.py): the `cpu` provider (csrc/cpu/residual_norm.cpp)
equals the chain of the single `cpu` kernels it fuses bit for bit, and the reference within
tests/tolerances.py's provider rule; the three uses in model/block.py, batch-broadcast rows,
odd widths, fp32 models; fallbacks, input checks and opcheck."""
from __future__ import annotations

import pytest
import torch

from liveavatar_rt.ops import OpTable, block_norms as ref, cpu_block_norms as prov
from tests.ops.conftest import seeded_randn
from tests.tolerances import assert_provider_close

BF, F32 = torch.bfloat16, torch.float32
SHAPES = {"tiny": (1, 192, 128, 3), "batched_rows": (4, 192, 64, 3), "odd_width": (2, 10, 67, 5), "one_frame": (1, 7, 48, 1)}


def _inputs(B, L, C, F, dtype, seed=0):
    """x (dtype), y (dtype), per-frame fp32 shift/scale/gate [B, F, 1, C], weight/bias [C]."""
    x = seeded_randn(B, L, C, seed=seed).to(dtype)
    y = seeded_randn(B, L, C, seed=seed + 1, scale=1.0).to(dtype)
    rows = [seeded_randn(B, F, 1, C, seed=seed + k, scale=0.3) for k in (2, 3, 4)]
    w, b = seeded_randn(C, seed=seed + 5, scale=0.5).to(dtype), seeded_randn(C, seed=seed + 6, scale=0.5).to(dtype)
    return x, y, *rows, w, b


def _chain_ln_modulate(ops, x, shift, scale, eps, out_dtype):
    """norm1 as model/block.py ran it before the fused op: the single `cpu` kernels."""
    B, L, C = x.shape
    n = ops.layer_norm.default(x, None, None, eps).to(x.dtype)
    return ops.modulate.default(n.reshape(B, shift.shape[1], -1, C), shift, scale, out_dtype).reshape(x.shape)


def _chain_residual_norm(ops, x, y, gate, w, b, shift, scale, eps, round_input, out_dtype):
    B, L, C = x.shape
    if gate is None:
        r = x.float() + y.float()
    else:
        F = gate.shape[1]
        r = ops.gated_residual.default(x.reshape(B, F, -1, C), y.reshape(B, F, -1, C), gate).reshape(x.shape)
    n = ops.layer_norm.default(r.to(out_dtype) if round_input else r, w, b, eps)
    if shift is None:
        return r, n.to(out_dtype)
    return r, ops.modulate.default(n.reshape(B, shift.shape[1], -1, C), shift, scale, out_dtype).reshape(x.shape)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [BF, F32], ids=str)
def test_ln_modulate_is_the_kernel_chain(ops, shape, dtype):
    B, L, C, F = SHAPES[shape]
    x, _, shift, scale, _, _, _ = _inputs(B, L, C, F, dtype)
    out = prov.ln_modulate(x, shift, scale, 1e-6, dtype)
    assert out.dtype == dtype and out.shape == x.shape
    assert torch.equal(out, _chain_ln_modulate(ops, x, shift, scale, 1e-6, dtype))
    assert_provider_close(out, ref.ln_modulate(x, shift, scale, 1e-6, dtype),
                          ref.ln_modulate(x.float(), shift, scale, 1e-6, F32), f"ln_modulate {shape}")


# the block's two uses (norm3: gate + affine, rounded input; norm2: no gate, modulation, fp32 x)
USES = {
    "norm3": dict(gate=True, affine=True, mod=False, round_input=True, x_fp32=False),
    "norm2": dict(gate=False, affine=False, mod=True, round_input=False, x_fp32=True),
    "all": dict(gate=True, affine=True, mod=True, round_input=True, x_fp32=True),
}


@pytest.mark.parametrize("use", USES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [BF, F32], ids=str)
def test_residual_norm_is_the_kernel_chain(ops, use, shape, dtype):
    u = USES[use]
    B, L, C, F = SHAPES[shape]
    x, y, shift, scale, gate, w, b = _inputs(B, L, C, F, dtype, seed=10)
    if u["x_fp32"]:
        x = x.float() * 3
    args = (x, y, gate if u["gate"] else None, w if u["affine"] else None, b if u["affine"] else None,
            shift if u["mod"] else None, scale if u["mod"] else None, 1e-6, u["round_input"], dtype)
    r, h = prov.residual_norm(*args)
    r_c, h_c = _chain_residual_norm(ops, *args)
    assert r.dtype == F32 and h.dtype == dtype and r.shape == h.shape == x.shape
    assert torch.equal(r, r_c) and torch.equal(h, h_c)
    r_ref, h_ref = ref.residual_norm(*args)
    assert torch.equal(r, r_ref)  # the residual is exact in fp32
    hi = [t.float() if isinstance(t, torch.Tensor) else t for t in args[:7]]
    assert_provider_close(h, h_ref, ref.residual_norm(*hi, 1e-6, u["round_input"], F32)[1], f"residual_norm {use}")


def test_gate_broadcast_over_the_batch(ops):
    """Rows of one sample's gate/shift/scale ([1, F, 1, C]) apply to every batch row."""
    x, y, shift, scale, gate, w, b = _inputs(3, 12, 32, 3, BF, seed=20)
    one = [t[:1] for t in (gate, shift, scale)]
    r, h = prov.residual_norm(x, y, one[0], w, b, one[1], one[2], 1e-6, True, BF)
    r_e, h_e = prov.residual_norm(x, y, one[0].expand(3, -1, -1, -1).contiguous(), w, b,
                                  *(t.expand(3, -1, -1, -1).contiguous() for t in one[1:]), 1e-6, True, BF)
    assert torch.equal(r, r_e) and torch.equal(h, h_e)


def test_other_dtypes_run_the_reference_and_strides_the_kernel(ops):
    """fp64 runs the reference; a strided x (a slice of a wider buffer) runs the kernel, as if
    contiguous."""
    x, y, shift, scale, gate, w, b = _inputs(1, 6, 8, 2, F32, seed=30)
    assert torch.equal(prov.ln_modulate(x.double(), shift, scale, 1e-6, torch.float64),
                       ref.ln_modulate(x.double(), shift, scale, 1e-6, torch.float64))
    args = (gate, w, b, shift, scale, 1e-6, True, BF)
    r64, h64 = prov.residual_norm(x.double(), y.double(), *args[:-1], torch.float64)
    r_ref, h_ref = ref.residual_norm(x.double(), y.double(), *args[:-1], torch.float64)
    assert torch.equal(r64, r_ref) and torch.equal(h64, h_ref)
    wide = torch.cat([x, x], dim=-1)[..., 8:]  # last dim contiguous, rows 16 apart
    assert not wide.is_contiguous()
    assert all(torch.equal(a, c) for a, c in zip(prov.residual_norm(wide, y, *args),
                                                 prov.residual_norm(wide.contiguous(), y, *args)))
    with pytest.raises(ValueError, match="shift and scale come together"):
        prov.residual_norm(x, y, None, None, None, shift, None, 1e-6, False, F32)


def test_bad_inputs_are_named(ops):
    x, y, shift, scale, gate, w, b = _inputs(2, 6, 8, 3, BF, seed=40)
    with pytest.raises(RuntimeError, match="frames F=4 must divide"):
        ops.ln_modulate.default(x, seeded_randn(2, 4, 1, 8), seeded_randn(2, 4, 1, 8), 1e-6, BF)
    with pytest.raises(RuntimeError, match=r"shift must be \[B\|1, F, 1, C\]"):
        ops.ln_modulate.default(x, seeded_randn(2, 3, 8), scale, 1e-6, BF)
    with pytest.raises(RuntimeError, match="x and y must have one shape"):
        ops.residual_norm.default(x, y[:, :3], gate, None, None, None, None, 1e-6, False, BF)
    with pytest.raises(RuntimeError, match="shift and scale come together"):
        ops.residual_norm.default(x, y, gate, None, None, shift, None, 1e-6, False, BF)
    with pytest.raises(RuntimeError, match="another per-frame input"):
        ops.residual_norm.default(x, y, seeded_randn(2, 1, 1, 8), None, None, shift, scale, 1e-6, False, BF)
    with pytest.raises(RuntimeError, match=r"residual_norm: weight must be a floating \[C\] = \[8\]"):
        ops.residual_norm.default(x, y, gate, seeded_randn(7), None, None, None, 1e-6, True, BF)
    with pytest.raises(RuntimeError, match="float32 or bfloat16"):
        ops.ln_modulate.default(x.double(), shift, scale, 1e-6, BF)


def test_opcheck_and_choice(ops):
    x, y, shift, scale, gate, w, b = _inputs(1, 6, 16, 2, BF, seed=50)
    torch.library.opcheck(ops.ln_modulate.default, (x, shift, scale, 1e-6, BF))
    torch.library.opcheck(ops.residual_norm.default, (x, y, gate, w, b, shift, scale, 1e-6, True, BF))
    torch.library.opcheck(ops.residual_norm.default, (x.float(), y, None, None, None, shift, scale, 1e-6, False, BF))
    t = OpTable("cpu", BF)
    assert t.chosen["ln_modulate"] == "cpu" and t.chosen["residual_norm"] == "cpu"
    assert OpTable("cpu", BF, force="ref").chosen["residual_norm"] == "ref"
