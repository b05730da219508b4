"""Sink offsets, the rolling sink rule and bounded time positions."""
from __future__ import annotations

import pytest
import torch

from liveavatar_rt.engine import PositionPolicy, SinkOffsets, ref_time
from liveavatar_rt.model.rope import noisy_positions, rope_cos_sin
from liveavatar_rt.ops import OPS

from .conftest import block_inputs, make_stepper


def test_sink_offsets_are_seeded_pure_functions():
    a, b = SinkOffsets(seed=3), SinkOffsets(seed=3)
    draws = [a(blk, step) for blk in range(50) for step in range(4)]
    assert draws == [b(blk, step) for blk in range(50) for step in range(4)]
    assert min(draws) >= 4 and max(draws) <= 30 and len(set(draws)) > 10
    assert draws != [SinkOffsets(seed=4)(blk, step) for blk in range(50) for step in range(4)]
    assert SinkOffsets(fixed=20)(7, 3) == 20
    with pytest.raises(ValueError, match="outside"):
        SinkOffsets(fixed=40)


def test_published_sink_rule():
    # reference at 30 until the block passes 30 - d, then it rolls with the block
    assert ref_time(0, 20) == 30 and ref_time(9, 20) == 30
    assert ref_time(12, 20) == 32 and ref_time(21, 20) == 41


def test_policy_official_raises_and_bounded_rebases():
    off, bnd = PositionPolicy("official"), PositionPolicy()
    assert off.frame_position(44994, 3) == bnd.frame_position(44994, 3) == 44994
    with pytest.raises(OverflowError, match="45000"):
        off.frame_position(44998, 3)
    for f in (44998, 45000, 90000, 10**9):
        p = bnd.frame_position(f, 3)
        assert 45000 - 30000 - 3 <= p and p + 3 <= 45000, (f, p)
        assert (f - p) % 30000 == 0


def test_ring_rotation_equals_writing_at_shifted_positions(tiny_fp32):
    cfg = tiny_fp32.cfg
    g = torch.Generator().manual_seed(0)
    k = torch.randn(1, 3 * 16, cfg.num_heads, cfg.head_dim, generator=g, dtype=torch.float64).float()
    rope = OPS["rope_apply"].reference
    at = lambda f: rope(k, *rope_cos_sin(noisy_positions(f, 3, 4, 4), cfg))  # noqa: E731
    shift = rope_cos_sin(torch.tensor([[-30000, 0, 0]]), cfg)
    rotated = rope(at(45000), shift[0].expand(48, -1), shift[1].expand(48, -1))
    torch.testing.assert_close(rotated, at(15000), rtol=0, atol=1e-5)


def test_bounded_equals_official_before_the_limit(tiny_fp32):
    a = make_stepper(tiny_fp32, PositionPolicy("official"))
    b = make_stepper(tiny_fp32, PositionPolicy("bounded", limit=48, period=24))
    c = make_stepper(tiny_fp32, PositionPolicy("bounded"))
    for n in range(12):  # frames 0..35 < 48
        noise, feats = block_inputs(tiny_fp32, n)
        xa, xb, xc = (s.denoise(noise, n, feats) for s in (a, b, c))
        assert torch.equal(xa, xb) and torch.equal(xa, xc)


def test_runs_past_the_published_table(tiny_fp32):
    """Blocks past 45000 latent frames: official raises, bounded keeps going with finite output,
    rebasing the ring (checked against re-rotated keys) and keeping positions in range."""
    start = 44_994 // 3  # block whose frames are 44994..44996
    off = make_stepper(tiny_fp32, PositionPolicy("official"))
    bnd = make_stepper(tiny_fp32, PositionPolicy())
    for n in range(start, start + 4):
        noise, feats = block_inputs(tiny_fp32, n)
        if n * 3 + 3 > 45000:
            with pytest.raises(OverflowError):
                off.denoise(noise, n, feats)
        else:
            torch.testing.assert_close(off.denoise(noise, n, feats), bnd.denoise(noise, n, feats), rtol=0, atol=0)
            continue
        before = bnd.rings[0].k.clone()
        first_rebase = bnd._rebased[0] == 0
        x = bnd.denoise(noise, n, feats)
        assert torch.isfinite(x).all()
        assert all(v == 1 for v in bnd._rebased.values())
        if first_rebase:
            # keys written before the rebase were rotated by -30000 frames, not left stale
            cfg, S = tiny_fp32.cfg, 16
            cos, sin = rope_cos_sin(torch.tensor([[-30000, 0, 0]]), cfg)
            flat = before.reshape(-1, *before.shape[2:])
            want = OPS["rope_apply"].reference(flat, cos.expand(flat.shape[1], -1), sin.expand(flat.shape[1], -1))
            want = want.reshape(before.shape)
            slot = (n * 3 * S) % (12 * S)
            keep = torch.ones(12 * S, dtype=torch.bool)
            keep[slot:slot + 3 * S] = False
            torch.testing.assert_close(bnd.rings[0].k[:, :, keep], want[:, :, keep], rtol=0, atol=0)
            assert not torch.equal(bnd.rings[0].k[:, :, keep], before[:, :, keep])
