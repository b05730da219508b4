"""The FP8 KV cache (`kv_cache_dtype="fp8"`, cache/kv.py): what it stores, how it attends, the
rebase, the memory it takes, and the pipeline option. The op itself (reference vs providers) is
tested in tests/ops/test_rolling_attention_fp8.py; the graph path in test_graphs.py and the
ring in tests/parallel/test_ring.py."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from liveavatar_rt import Pipeline
from liveavatar_rt.cache import CondCache, RingCache
from liveavatar_rt.model.rope import rope_cos_sin
from liveavatar_rt.ops import OpTable
from liveavatar_rt.ops.kv_fp8 import E4M3, dequantize_kv, quantize_kv
from liveavatar_rt.ops.rope import rope_apply
from liveavatar_rt.config import from_name

from .conftest import same_bits

B, H, D, CAP, N, LC = 1, 2, 64, 32, 8, 6


def tables(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    ang = torch.rand(n, D // 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 30
    return ang.cos().float(), ang.sin().float()


def caches(kv_dtype, ops):
    g = torch.Generator().manual_seed(0)
    cond = CondCache(1, kv_dtype)
    cond.store(0, torch.randn(B, LC, H, D, generator=g).bfloat16(), torch.randn(B, LC, H, D, generator=g).bfloat16())
    return RingCache(1, B, CAP, H, D, torch.bfloat16, "cpu", kv_dtype), cond


def block(seed: int):
    g = torch.Generator().manual_seed(seed)
    return tuple((torch.randn(B, N, H, D, generator=g) * s).bfloat16() for s in (2, 2, 1))


@pytest.mark.parametrize("slot", [0, 8, 24])
def test_a_block_stores_its_quantized_rows_and_attends_over_them(slot):
    ops = OpTable("cpu", torch.bfloat16, force="ref")
    ring8, cond8 = caches(E4M3, ops)
    ring, cond = caches(None, ops)
    q, k, v = block(slot)
    plan8 = ring8.plan(slot, tables(N, 1), tables(LC, 2))
    plan = ring.plan(slot, tables(N, 1), tables(LC, 2))
    out8 = ring8.attend(0, plan8, cond8, ops)(q, k, v)
    out = ring.attend(0, plan, cond, ops)(q, k, v)
    k8, ks = quantize_kv(rope_apply(k, plan.q_cos, plan.q_sin))
    v8, vs = quantize_kv(v)
    rk, rv, rks, rvs = ring8.layer(0)
    assert same_bits(rk[:, slot:slot + N], k8) and same_bits(rv[:, slot:slot + N], v8)
    assert torch.equal(rks[:, slot:slot + N], ks) and torch.equal(rvs[:, slot:slot + N], vs)
    # the written rows dequantize to the bf16 ring's rows within E4M3's resolution
    for got, want in ((dequantize_kv(rk, rks, torch.float32), ring.k[0]), (dequantize_kv(rv, rvs, torch.float32), ring.v[0])):
        d = got[:, slot:slot + N] - want[:, slot:slot + N].float()
        assert d.norm() / want[:, slot:slot + N].float().norm() < 0.04
    # ~2.5 % per row moves logits of std ~4 (q, k of std 2) by ~0.1: outputs move ~5 %
    rel = (out8.float() - out.float()).norm() / out.float().norm()
    assert 0 < rel < 0.1, rel


def test_the_fused_write_path_stays_out_of_an_fp8_ring():
    """Through `raw` (q/k before the norms) an fp8 ring gets the same codes as through the plain
    form: qk_norm_rope's in-place write into the ring slot is only used for a bf16 ring."""
    ops = OpTable("cpu", torch.bfloat16, force="ref")
    g = torch.Generator().manual_seed(3)
    q, k = (torch.randn(B, N, H * D, generator=g).bfloat16() for _ in range(2))
    v = torch.randn(B, N, H, D, generator=g).bfloat16()
    wq, wk = (torch.rand(H * D, generator=g).bfloat16() + 0.5 for _ in range(2))
    a, cond_a = caches(E4M3, ops)
    b, cond_b = caches(E4M3, ops)
    plan = a.plan(8, tables(N, 1), tables(LC, 2))
    out_raw = a.attend(0, plan, cond_a, ops).raw(q, k, v, wq, wk, 1e-6, H)
    qn = ops.rms_norm(q, wq, 1e-6).unflatten(-1, (H, D))
    kn = ops.rms_norm(k, wk, 1e-6).unflatten(-1, (H, D))
    out = b.attend(0, plan, cond_b, ops)(qn, kn, v)
    assert all(same_bits(x, y) for x, y in zip(a.tensors(), b.tensors()))
    assert torch.equal(out_raw, out)


def test_a_rebase_rotates_the_stored_keys():
    ops = OpTable("cpu", torch.bfloat16, force="ref")
    ring, cond = caches(E4M3, ops)
    for slot in range(0, CAP, N):
        q, k, v = block(slot)
        ring.attend(0, ring.plan(slot, tables(N, slot), tables(LC, 2)), cond, ops)(q, k, v)
    before = dequantize_kv(ring.k, ring.ks, torch.bfloat16)
    cos, sin = rope_cos_sin(torch.tensor([[-12, 0, 0]]), from_name("s2v-14b"))
    ring.rotate(cos[:, :D // 2], sin[:, :D // 2], ops)
    want = rope_apply(before.reshape(B, CAP, H, D), cos[:, :D // 2].expand(CAP, -1), sin[:, :D // 2].expand(CAP, -1))
    got = dequantize_kv(ring.k, ring.ks, torch.float32).reshape(B, CAP, H, D)
    assert (got - want.float()).norm() / want.float().norm() < 0.04
    assert not torch.allclose(got, before.float().reshape(B, CAP, H, D), rtol=0.1, atol=0.1)


def test_the_conditioning_cache_quantizes_and_keeps_its_addresses():
    cond = CondCache(1, E4M3)
    g = torch.Generator().manual_seed(0)
    k, v = (torch.randn(B, LC, H, D, generator=g).bfloat16() for _ in range(2))
    with torch.no_grad():
        cond.store(0, k, v)
        ptrs = [t.data_ptr() for t in cond.tensors()]
        cond.store(0, v, k)  # the sink replacement: same shapes
    assert [t.data_ptr() for t in cond.tensors()] == ptrs  # a captured graph reads them by address
    k8, ks = quantize_kv(v)
    assert same_bits(cond.k[0], k8) and torch.equal(cond.ks[0], ks)
    assert cond.k[0].dtype == E4M3 and cond.ks[0].shape == (B, LC, H)
    copy = cond.alias()
    assert [t.data_ptr() for t in copy.tensors()] == ptrs and copy.fp8


def test_an_fp8_ring_takes_half_the_bytes_plus_its_scales():
    bf16 = RingCache(4, 1, 96, 40, 128, torch.bfloat16, "meta")
    fp8 = RingCache(4, 1, 96, 40, 128, torch.bfloat16, "meta", E4M3)
    nbytes = lambda r: sum(t.numel() * t.element_size() for t in r.tensors())  # noqa: E731
    assert nbytes(fp8) == nbytes(bf16) // 2 + 2 * 4 * 96 * 40 * 4  # codes + one fp32 per token, head
    with pytest.raises(ValueError, match="kv cache dtype"):
        RingCache(1, 1, 8, 1, 8, torch.bfloat16, "cpu", torch.float16)


def test_pipeline_option():
    face = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    pcm = (0.2 * np.sin(2 * np.pi * 200 * np.arange(16000) / 16000)).astype(np.float32)

    def latents(kv):
        pipe = Pipeline.from_pretrained("tiny", quiet=True, max_area=64 * 64, kv_cache_dtype=kv)
        assert pipe.kv_cache_dtype == kv
        with pipe.session(face, seed=0) as s:
            s.push_audio(pcm, 16000)
            s.end_audio()
            out = torch.cat([b.latent.float() for b in s.frames()])
            rings = s.executor.stepper.rings
            assert rings[0].k.dtype == (E4M3 if kv else torch.bfloat16)
            return out

    a, b = latents(None), latents("fp8")
    rel = ((a - b).norm() / a.norm()).item()
    assert 0 < rel < 0.1, rel
    with pytest.raises(ValueError, match="kv_cache_dtype 'int8'"):
        Pipeline.from_pretrained("tiny", quiet=True, kv_cache_dtype="int8")
