"""The training forward (recipes/tiny/train/dit_forward.py) computes what the inference engine
computes: a causal window of blocks at one step equals the BlockStepper running those blocks
one after another through its ring cache - so what the student learns is what the runtime runs."""
from __future__ import annotations

import pytest
import torch

from liveavatar_rt.config import StreamConfig, from_name
from liveavatar_rt.engine.positions import SinkOffsets
from liveavatar_rt.engine.stepper import BlockStepper
from liveavatar_rt.model import CausalWanS2V
from liveavatar_rt.model.init import init_random_
from liveavatar_rt.ops import OpTable
from recipes.tiny.train.dit_forward import Placement, TrainForward

HW = (8, 8)
BLOCKS = 5  # one more than the ring holds: block 4 must no longer see block 0


def _setup(seed=0):
    torch.manual_seed(seed)
    cfg = from_name("tiny")
    model = init_random_(CausalWanS2V(cfg, OpTable("cpu", torch.float32, force="ref")), seed=seed)
    ref = torch.randn(1, 16, 1, *HW)
    motion = torch.randn(1, 16, 19, *HW)
    feats = torch.randn(1, BLOCKS, cfg.audio_layers, cfg.audio_dim, 12)
    xs = torch.randn(1, 16, 3 * BLOCKS, *HW)
    return model, ref, motion, feats, xs


def _train_velocity(model, ref, motion, feats, xs, place, t, causal):
    fwd = TrainForward(model, HW)
    text_kv = fwd.text_kv(1)
    cond = fwd.cond(ref, motion, text_kv)
    return fwd.velocity(xs, t.expand(1, xs.shape[2]), cond, text_kv, fwd.audio(feats), place, causal=causal)


@pytest.mark.parametrize("step", [0, 2])
def test_causal_window_equals_the_streaming_engine(step):
    model, ref, motion, feats, xs = _setup()
    stream = StreamConfig()
    offsets = SinkOffsets(seed=5, low=stream.sink_offset_range[0], high=stream.sink_offset_range[1])
    st = BlockStepper(model, stream, HW, offsets=offsets)
    st.set_text(torch.zeros(1, model.cfg.text_dim))
    st.prefill(ref, motion)
    with torch.no_grad():
        ref_v = [st.velocity(step, xs[:, :, 3 * b:3 * b + 3], b, st.audio(feats[:, b]), torch.zeros(1, 16, 3, *HW))
                 for b in range(BLOCKS)]
        place = Placement(0, [offsets(b, step) for b in range(BLOCKS)])
        v = _train_velocity(model, ref, motion, feats, xs, place, st.timesteps[step], causal=True)
    for b in range(BLOCKS):
        got, want = v[:, :, 3 * b:3 * b + 3], ref_v[b]
        rel = (got - want).norm() / want.norm()
        assert rel < 1e-5, f"block {b}: relative difference {rel:.2e}"


def test_causal_ignores_the_future_and_bidirectional_does_not():
    model, ref, motion, feats, xs = _setup(1)
    place = Placement(30, [7] * BLOCKS)
    t = torch.tensor(600.0)
    later = xs.clone()
    later[:, :, 9:] += 1.0  # change blocks 3 and 4 only
    with torch.no_grad():
        a = _train_velocity(model, ref, motion, feats, xs, place, t, causal=True)
        b = _train_velocity(model, ref, motion, feats, later, place, t, causal=True)
        assert torch.equal(a[:, :, :9], b[:, :, :9])
        c = _train_velocity(model, ref, motion, feats, xs, place, t, causal=False)
        d = _train_velocity(model, ref, motion, feats, later, place, t, causal=False)
        assert not torch.allclose(c[:, :, :3], d[:, :, :3])


def test_gradients_reach_the_conditioning_and_audio_weights():
    model, ref, motion, feats, xs = _setup(2)
    for p in model.parameters():
        p.requires_grad_(True)
    v = _train_velocity(model, ref, motion, feats, xs, Placement(0, [10] * BLOCKS), torch.tensor(800.0), causal=True)
    v.square().mean().backward()
    for name in ("frame_packer.proj.weight", "casual_audio_encoder.encoder.conv1_local.conv.weight",
                 "audio_injector.injector.0.q.weight", "trainable_cond_mask.weight", "blocks.0.self_attn.k.weight"):
        g = model.get_parameter(name).grad
        assert g is not None and g.abs().sum() > 0, name
