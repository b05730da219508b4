"""The caches' fused attend path (`raw`: ops.qk_norm_rope) against the plain one, and autograd
through the forced-reference model (a training recipe backpropagates through it)."""
from __future__ import annotations

import pytest
import torch

from liveavatar_rt.cache import CondCache, RingCache
from liveavatar_rt.config import from_name
from liveavatar_rt.model import CausalWanS2V
from liveavatar_rt.model.init import init_random_
from liveavatar_rt.model.rope import noisy_positions, ref_positions, rope_cos_sin
from liveavatar_rt.ops import OpTable

CFG = from_name("tiny")
HW = (2, 4)  # patch grid of one latent frame: 8 tokens per frame
N_COND, N_BLOCK = 8, 16  # reference frame tokens; 2 frames per block


def _plain(attend):
    """The same attend without its `raw` method: SelfAttention takes the unfused path."""
    return lambda q, k, v: attend(q, k, v)


def _setup(dtype, force="ref", seed=0):
    model = init_random_(CausalWanS2V(CFG, OpTable("cpu", dtype, force=force)), seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    cond_x = torch.randn(1, N_COND, CFG.dim, generator=g).to(dtype)
    xs = [torch.randn(1, N_BLOCK, CFG.dim, generator=g).to(dtype) for _ in range(3)]
    cond_rope = rope_cos_sin(ref_positions(30, *HW), CFG)
    q_ropes = [rope_cos_sin(noisy_positions(2 * b, 2, *HW), CFG) for b in range(3)]
    return model, cond_x, xs, cond_rope, q_ropes


def _run(model, cond_x, xs, cond_rope, q_ropes, fused: bool):
    """Prefill one layer's cond cache, then 3 blocks through a 2-block ring (wraps once)."""
    attn, ops = model.blocks[0].self_attn, model.ops
    wrap = (lambda a: a) if fused else _plain
    cond = CondCache(1)
    outs = [attn(cond_x, wrap(cond.prefill_attend(0, *cond_rope, ops)))]
    ring = RingCache(1, 1, 2 * N_BLOCK, CFG.num_heads, CFG.head_dim, ops.dtype)
    for b, x in enumerate(xs):
        outs.append(attn(x, wrap(ring.attend(0, ring.plan(b * N_BLOCK, q_ropes[b], cond_rope), cond, ops))))
    return outs, cond, ring


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_forced_ref_fused_path_is_bitwise_the_plain_path(dtype):
    """With reference ops, `raw` (qk_norm_rope) computes exactly what norm + RoPE did."""
    args = _setup(dtype)
    plain, cond_p, ring_p = _run(*args, fused=False)
    fused, cond_f, ring_f = _run(*args, fused=True)
    for i, (a, b) in enumerate(zip(plain, fused)):
        assert torch.equal(a, b), f"output {i} differs"
    assert torch.equal(cond_p.k[0], cond_f.k[0]) and torch.equal(cond_p.v[0], cond_f.v[0])
    assert torch.equal(ring_p.k, ring_f.k) and torch.equal(ring_p.v, ring_f.v)


def test_best_providers_fused_path_close_to_reference():
    """Default providers through `raw` (C++ qk_norm_rope writing the ring slot) stay close to
    the forced-ref plain path in bf16: outputs and ring contents."""
    ref, _, ring_r = _run(*_setup(torch.bfloat16), fused=False)
    best, _, ring_b = _run(*_setup(torch.bfloat16, force=None), fused=True)
    for i, (a, b) in enumerate(zip(ref, best)):
        rel = ((a.float() - b.float()).norm() / a.float().norm()).item()
        assert rel < 2e-2, f"output {i}: rel L2 {rel:.3g}"
    rel = ((ring_r.k.float() - ring_b.k.float()).norm() / ring_r.k.float().norm()).item()
    assert rel < 1e-2, f"ring keys: rel L2 {rel:.3g}"


def test_gradients_flow_through_forced_ref_model():
    """A forced-ref model in fp32 backpropagates through a block using the caches' fused attend
    (prefill, then a ring step): every parameter of the block's self-attention gets a finite,
    non-zero gradient, and so does the input."""
    model, cond_x, xs, cond_rope, q_ropes = _setup(torch.float32)
    for p in model.parameters():
        p.requires_grad_(True)
    blk, ops = model.blocks[0], model.ops
    text_kv = blk.cross_attn.project_kv(torch.randn(1, CFG.text_len, CFG.dim))
    e0 = torch.randn(1, 1, 6, CFG.dim) * 0.1
    cond = CondCache(1)
    blk(cond_x, e0, text_kv, cond.prefill_attend(0, *cond_rope, ops))
    ring = RingCache(1, 1, 2 * N_BLOCK, CFG.num_heads, CFG.head_dim, ops.dtype)
    x = xs[0].clone().requires_grad_(True)
    e = torch.randn(1, 2, 6, CFG.dim) * 0.1
    out = blk(x, e, text_kv, ring.attend(0, ring.plan(0, q_ropes[0], cond_rope), cond, ops))
    (out.square().mean()).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name, p in blk.self_attn.named_parameters():
        assert p.grad is not None, f"self_attn.{name}: no gradient"
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, f"self_attn.{name}: zero/non-finite gradient"
    assert blk.modulation.grad is not None and blk.modulation.grad.abs().sum() > 0
