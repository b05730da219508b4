"""`cpu` providers of the block's small ops (liveavatar_rt/ops/cpu_block_providers.py) against
their references: `gated_residual` bit-identical, `layer_norm`, `gelu_tanh` and `attention`
under tests/tolerances.py's provider rule. Model shapes (tiny [1, 3 frames, 64 tokens, 128], the
audio injector's [3, 64, 2, 64] x 5 keys, a 14B row width), odd and strided ones; out-variant,
input checks and torch.library.opcheck of the C++ ops; the OpTable picks them.
"""
from __future__ import annotations

import pytest
import torch

from liveavatar_rt.ops import OpTable, cpu_block_providers as prov
from liveavatar_rt.ops.activation import gelu_tanh as gelu_ref
from liveavatar_rt.ops.attention import attention as attention_ref
from liveavatar_rt.ops.cpu_providers import rolling_attention_supports
from liveavatar_rt.ops.modulate import gated_residual as gated_ref, modulate as modulate_ref
from liveavatar_rt.ops.norm import layer_norm as layer_norm_ref
from tests.ops.conftest import seeded_randn
from tests.tolerances import assert_provider_close

DTYPES = [torch.float32, torch.bfloat16]


_randn = seeded_randn  # short local name


# ---------------------------------------------------------------- gated_residual

GATED_FORMS = {  # x/y shape, gate shape (the reference's broadcast forms)
    "tiny_per_frame": ((1, 3, 64, 128), (1, 3, 1, 128)),
    "per_token": ((2, 16, 128), (2, 16, 128)),
    "gate_batch_bcast": ((2, 3, 5, 67), (1, 3, 1, 67)),
    "gate_one_frame": ((2, 3, 5, 67), (2, 1, 1, 67)),
    "14b_row": ((1, 2, 3, 5120), (1, 2, 1, 5120)),
}


@pytest.mark.parametrize("form", GATED_FORMS)
@pytest.mark.parametrize("xdtype", DTYPES, ids=lambda d: f"x_{str(d)[6:]}")
@pytest.mark.parametrize("ydtype", DTYPES, ids=lambda d: f"y_{str(d)[6:]}")
def test_gated_residual_bit_identical(ops, form, xdtype, ydtype):
    xs, gs = GATED_FORMS[form]
    x, y, gate = _randn(*xs, seed=1).to(xdtype), _randn(*xs, seed=2).to(ydtype), _randn(*gs, seed=3, scale=0.5)
    out, ref = prov.gated_residual(x, y, gate), gated_ref(x, y, gate)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert torch.equal(out, ref), f"{int((out != ref).sum())} of {out.numel()} differ"


def test_gated_residual_strided_inputs_and_out_variant(ops):
    wide = _randn(1, 48, 3 * 128, seed=4).bfloat16()
    x, y = wide[..., :128], wide[..., 256:]  # slices of a wider buffer: rows with a stride
    gate = _randn(1, 3, 128, seed=5)
    ref = gated_ref(x.reshape(1, 3, 16, 128), y.reshape(1, 3, 16, 128), gate.unsqueeze(2)).reshape(1, 48, 128)
    assert torch.equal(ops.gated_residual.default(x, y, gate), ref)
    out = torch.empty(1, 48, 128)
    ops.gated_residual_out.default(out, x, y, gate)
    assert torch.equal(out, ref)


def test_per_frame_form_taken_by_the_kernels(ops):
    """The C++ gated_residual / modulate take the block's [B, F, S, C] form with per-frame rows
    [B|1, F|1, 1, C] directly (no Python reshapes), bit-identical to the references."""
    x, y = _randn(2, 3, 5, 16, seed=17).bfloat16(), _randn(2, 3, 5, 16, seed=18)
    gate, shift, scale = _randn(1, 3, 1, 16, seed=19), _randn(2, 1, 1, 16, seed=20), _randn(2, 1, 1, 16, seed=21)
    assert torch.equal(ops.gated_residual.default(x, y, gate), gated_ref(x, y, gate))
    assert torch.equal(ops.modulate.default(x, shift, scale, torch.bfloat16),
                       modulate_ref(x, shift, scale, torch.bfloat16))
    with pytest.raises(RuntimeError, match=r"gate must be \[B\|1, F\|1, 1, C\]"):
        ops.gated_residual.default(x, y, _randn(1, 3, 2, 16))
    with pytest.raises(RuntimeError, match=r"shift must be \[B\|1, F\|1, 1, C\]"):
        ops.modulate.default(x, _randn(2, 2, 1, 16), scale, torch.float32)
    torch.library.opcheck(ops.gated_residual.default, (x, y, gate))
    torch.library.opcheck(ops.modulate.default, (x, shift, scale, torch.bfloat16))


def test_gated_residual_falls_back_for_other_forms(ops):
    """Forms the kernel does not take run the reference: broadcast x, fp64, gate per channel only."""
    x, y = _randn(1, 4, 8), _randn(1, 4, 8, seed=1)
    assert torch.equal(prov.gated_residual(x[:, :1], y, _randn(8)), gated_ref(x[:, :1], y, _randn(8)))
    assert torch.equal(prov.gated_residual(x.double(), y, _randn(8)), gated_ref(x.double(), y, _randn(8)))


def test_gated_residual_rejects_bad_inputs(ops):
    x, y, g = _randn(1, 6, 8), _randn(1, 6, 8), _randn(1, 3, 8)
    with pytest.raises(RuntimeError, match="gate must be float32"):
        ops.gated_residual.default(x, y, g.bfloat16())
    with pytest.raises(RuntimeError, match="must divide"):
        ops.gated_residual.default(x, y, _randn(1, 4, 8))
    with pytest.raises(RuntimeError, match="one shape"):
        ops.gated_residual.default(x, y[:, :3], g)
    with pytest.raises(RuntimeError, match="gate channels"):
        ops.gated_residual.default(x, y, _randn(1, 3, 7))
    with pytest.raises(RuntimeError, match="out must be"):
        ops.gated_residual_out.default(torch.empty(1, 6, 8, dtype=torch.bfloat16), x, y, g)


# ---------------------------------------------------------------- layer_norm

LN_SHAPES = {"tiny": (1, 192, 128), "injector": (3, 64, 128), "odd": (3, 67), "one_row_wide": (1, 40000),
             "many_rows_14b": (64, 5120), "c1": (4, 1)}


def _check_ln(x, w, b, name):
    out = prov.layer_norm(x, w, b, 1e-6)
    ref32 = layer_norm_ref(x.float(), None if w is None else w.float(), None if b is None else b.float(), 1e-6)
    assert out.dtype == torch.float32
    assert_provider_close(out, layer_norm_ref(x, w, b, 1e-6), ref32, name)


@pytest.mark.parametrize("shape", LN_SHAPES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("affine", [False, True], ids=["plain", "affine"])
def test_layer_norm_within_provider_rule(ops, shape, dtype, affine):
    x = (_randn(*LN_SHAPES[shape], seed=6) + 2.0).to(dtype)  # a mean offset: exercises the centring
    C = x.shape[-1]
    w, b = (_randn(C, seed=7).bfloat16(), _randn(C, seed=8)) if affine else (None, None)
    _check_ln(x, w, b, f"layer_norm[cpu] {shape} {dtype}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_layer_norm_strided_rows_and_last_dim(ops, dtype):
    wide = _randn(2, 16, 3 * 128, seed=9).to(dtype)
    _check_ln(wide[..., 128:256], None, None, "layer_norm[cpu] strided rows")
    _check_ln(_randn(128, 24, seed=10).to(dtype).t(), None, None, "layer_norm[cpu] strided last dim")


def test_layer_norm_rejects_bad_inputs(ops):
    with pytest.raises(RuntimeError, match="float32 or bfloat16"):
        ops.layer_norm.default(_randn(2, 4).double(), None, None, 1e-6)
    with pytest.raises(RuntimeError, match=r"weight must be a floating \[C\]"):
        ops.layer_norm.default(_randn(2, 4), _randn(5), None, 1e-6)


# ---------------------------------------------------------------- gelu_tanh

@pytest.mark.parametrize("shape", [(1, 192, 256), (7,), (3, 5, 67), (2, 40000)], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gelu_tanh_within_provider_rule(ops, shape, dtype):
    x = _randn(*shape, seed=15, scale=4.0).to(dtype)
    x.view(-1)[:4] = torch.tensor([-60.0, 60.0, 0.0, -1e-3])  # saturated tails, zero, tiny
    out = prov.gelu_tanh(x)
    assert out.dtype == dtype and out.shape == x.shape
    assert_provider_close(out, gelu_ref(x), gelu_ref(x.float()), f"gelu_tanh[cpu] {shape} {dtype}")


def test_gelu_tanh_strided_and_bad_input(ops):
    x = _randn(64, 24, seed=16).t()
    assert_provider_close(prov.gelu_tanh(x), gelu_ref(x), gelu_ref(x), "gelu_tanh[cpu] strided")
    with pytest.raises(RuntimeError, match="float32 or bfloat16"):
        ops.gelu_tanh.default(x.double())
    assert torch.equal(prov.gelu_tanh(x.double()), gelu_ref(x.double()))  # other dtypes: the reference


# ---------------------------------------------------------------- attention

ATTN_SHAPES = {  # B, Lq, Lk, H, D
    "tiny_text": (1, 192, 16, 2, 64), "injector": (3, 64, 5, 2, 64), "one_key": (2, 7, 1, 3, 48),
    "14b_scaled": (1, 99, 64, 40, 128),
}


@pytest.fixture(scope="module")
def attn_ok(ops):
    why = rolling_attention_supports(torch.device("cpu"), torch.float32)
    if why is not None:
        pytest.skip(why)


@pytest.mark.parametrize("shape", ATTN_SHAPES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_attention_within_provider_rule(attn_ok, shape, dtype):
    B, Lq, Lk, H, D = ATTN_SHAPES[shape]
    q, k, v = (_randn(B, n, H, D, seed=s, scale=1.5).to(dtype) for s, n in ((11, Lq), (12, Lk), (13, Lk)))
    out = prov.attention(q, k, v)
    assert out.dtype == dtype and out.shape == q.shape
    assert_provider_close(out, attention_ref(q, k, v), attention_ref(q.float(), k.float(), v.float()),
                          f"attention[cpu] {shape} {dtype}")


def test_attention_strided_inputs(attn_ok):
    qkv = _randn(2, 10, 3, 2, 64, seed=14).bfloat16()
    q, k, v = qkv[:, :, 0], qkv[:, :6, 1], qkv[:, :6, 2]
    assert not q.is_contiguous()
    assert_provider_close(prov.attention(q, k, v), attention_ref(q, k, v),
                          attention_ref(q.float(), k.float(), v.float()), "attention[cpu] strided")


def test_attention_falls_back_for_other_forms(attn_ok):
    q, k = _randn(1, 4, 2, 6), _randn(1, 3, 2, 6, seed=1)
    assert torch.equal(prov.attention(q, k.bfloat16(), k.bfloat16()), attention_ref(q, k.bfloat16(), k.bfloat16()))
    q5 = _randn(1, 4, 2, 5)  # odd head dim: the kernel's RoPE pairs need an even D
    assert torch.equal(prov.attention(q5, q5, q5), attention_ref(q5, q5, q5))


# ---------------------------------------------------------------- registry, opcheck

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_providers_are_chosen(ops, dtype):
    t = OpTable("cpu", dtype)
    assert t.chosen["gated_residual"] == "cpu" and t.chosen["layer_norm"] == "cpu" and t.chosen["gelu_tanh"] == "cpu"
    if rolling_attention_supports(torch.device("cpu"), dtype) is None:
        assert t.chosen["attention"] == "cpu"
    assert OpTable("cpu", dtype, force="ref").chosen["gated_residual"] == "ref"


def test_opcheck(ops):
    x, y, g = _randn(1, 6, 8).bfloat16(), _randn(1, 6, 8, seed=1), _randn(1, 3, 8, seed=2)
    torch.library.opcheck(ops.gated_residual.default, (x, y, g))
    torch.library.opcheck(ops.gated_residual_out.default, (torch.empty(1, 6, 8), x, y, g))
    torch.library.opcheck(ops.layer_norm.default, (x, _randn(8), None, 1e-6))
    torch.library.opcheck(ops.layer_norm.default, (y, None, None, 1e-5))
    torch.library.opcheck(ops.gelu_tanh.default, (x,))
