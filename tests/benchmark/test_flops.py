"""The analytic DiT FLOP count (benchmark/flops.py) against what the reference ops execute, for
blocks before the ring is full and after: the linear part against torch's FlopCounterMode
(it sees every addmm/mm), the attention part against the shapes of the actual
scaled_dot_product_attention calls (FlopCounterMode does not count CPU SDPA)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from liveavatar_rt.benchmark.flops import block_flops, cond_tokens, step_flops
from liveavatar_rt.config import StreamConfig, from_name
from liveavatar_rt.model import CausalWanS2V
from liveavatar_rt.model.init import init_random_
from liveavatar_rt.ops import OpTable
from tests.engine.conftest import block_inputs, make_stepper


@pytest.fixture(scope="module")
def tiny_ref():
    return init_random_(CausalWanS2V(from_name("tiny"), OpTable("cpu", torch.float32, force="ref")), seed=0)


@pytest.mark.parametrize("hw", [(8, 8), (16, 8)])
def test_step_flops_match_counted(tiny_ref, hw, monkeypatch):
    sdpa, attn_flops = F.scaled_dot_product_attention, []

    def counting_sdpa(q, k, v, *a, **kw):  # q: [B, H, Lq, D], k: [B, H, Lk, D]
        attn_flops.append(4 * q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2] * q.shape[3])
        return sdpa(q, k, v, *a, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting_sdpa)
    st = make_stepper(tiny_ref, hw=hw)
    stream = StreamConfig()
    noise, feats = block_inputs(tiny_ref, 0, hw=hw)
    cond = torch.zeros_like(noise)
    checked = 0
    for step in st.steps:  # kept per step and session, as the time embedding of every block after
        st.time_embedding(step, 1, noise.shape[2])
    for block in range(6):  # the ring (12 latent frames = 4 blocks) fills at block 3
        audio = st.audio(feats)
        attn_flops.clear()
        with FlopCounterMode(display=False) as fc:
            st.velocity(0, noise, block, audio, cond)
        want = step_flops(tiny_ref.cfg, stream, hw, block)
        assert want["linear"] == fc.get_total_flops(), f"block {block} {hw}: linear FLOPs"
        assert want["attention"] == sum(attn_flops), f"block {block} {hw}: attention FLOPs"
        checked += 1
    assert checked == 6


def test_ring_growth_and_block_total():
    cfg, stream = from_name("tiny"), StreamConfig()
    per = [step_flops(cfg, stream, (8, 8), b)["attention"] for b in range(6)]
    assert per[0] < per[1] < per[2] < per[3] == per[4] == per[5]  # full ring from block 3 on
    assert block_flops(cfg, stream, (8, 8), 5) == 4 * step_flops(cfg, stream, (8, 8), 5)["total"]
    assert cond_tokens(cfg, 8, 8) == 40  # 16 (reference) + 16 + 4 + 4: Lc = 2.5 S


def test_bad_input():
    with pytest.raises(ValueError, match="divisible by 8"):
        step_flops(from_name("tiny"), StreamConfig(), (12, 8), 0)
    with pytest.raises(ValueError, match="block index"):
        step_flops(from_name("tiny"), StreamConfig(), (8, 8), -1)
