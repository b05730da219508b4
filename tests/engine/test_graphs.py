"""CUDA-graph steps (engine/graphs.py): the static formulation equals the eager path bit for
bit (CPU, uncaptured: the proof that what gets captured computes the same thing), the
`cuda_graphs` switch, and capture + replay against eager (GPU only; skipped here)."""
from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
import torch

from liveavatar_rt.config import StreamConfig, from_name
from liveavatar_rt.engine import BlockStepper, Pipeline, PositionPolicy, SinkOffsets
from liveavatar_rt.engine.graphs import StepGraphs, use_cuda_graphs
from liveavatar_rt.model import CausalWanS2V
from liveavatar_rt.model.init import init_random_
from liveavatar_rt.ops import OpTable

from .conftest import block_inputs, make_stepper, same_bits

# Tiny preset, 8x8 latent: a block is 3 frames = 48 tokens, the ring 12 frames = 4 blocks, so
# blocks 0-2 fill the ring (eager), block 3 is the first static one, block 4 wraps to slot 0.
# Positions rebase by 12 frames once a block passes frame 24: at block 8 (frames 24-26).
POLICY = PositionPolicy("bounded", limit=24, period=12)
BLOCKS = 10
SINK_BLOCK = 4  # the sink replacement: a re-prefill with block 0's first latent frame, as Session does
STEPS = StreamConfig().sampling_steps


def tiny(dtype: torch.dtype, device: str = "cpu") -> CausalWanS2V:
    return init_random_(CausalWanS2V(from_name("tiny"), OpTable(device, dtype)), seed=0, device=device)


def run_pair(eager: BlockStepper, static: BlockStepper, model, blocks=range(BLOCKS)):
    """Denoise the same blocks with both steppers; every latent, velocity and ring must match."""
    first = None
    for n in blocks:
        if n == SINK_BLOCK and first is not None:
            for st in (eager, static):
                st.prefill(first, torch.zeros(1, 16, 19, 8, 8, dtype=first.dtype))
        noise, feats = block_inputs(model, n)
        ta, tb = [], []
        xa, xb = eager.denoise(noise, n, feats, trace=ta), static.denoise(noise, n, feats, trace=tb)
        assert torch.equal(xa, xb), f"block {n}: latent differs by {(xa.float() - xb.float()).abs().max()}"
        for i, ((va, _), (vb, _)) in enumerate(zip(ta, tb)):
            assert torch.equal(va, vb), f"block {n} step {i}: velocity differs"
        for i in eager.steps:
            assert all(same_bits(a, b) for a, b in zip(eager.rings[i].tensors(), static.rings[i].tensors())), \
                f"block {n}: ring {i} differs"
        if n == 0:
            first = xa[:, :, :1].clone()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_static_steps_equal_eager(dtype):
    model = tiny(dtype)
    eager, static = make_stepper(model, POLICY), make_stepper(model, POLICY)
    static.graphs = StepGraphs("cpu", capture=False)
    run_pair(eager, static, model)
    # the static path ran every step of every block from the one that fills the ring on, built
    # once per step: the sink re-prefill kept the conditioning K/V addresses (CondCache.store)
    assert static.graphs.static_runs == STEPS * (BLOCKS - 3)
    assert static.graphs.builds == STEPS
    assert static._rebased == {i: 1 for i in range(STEPS)}  # a rebase happened in the static run


def test_static_steps_equal_eager_with_an_fp8_kv_cache():
    """The fp8 cache's two write paths (a slice at the plan's slot: eager; index_copy_ of the
    codes as bytes at `slots`: static/graph) and its rebase (dequantize, rotate, quantize) agree."""
    from liveavatar_rt.ops.kv_fp8 import E4M3

    model = tiny(torch.bfloat16)
    eager, static = make_stepper(model, POLICY, kv_dtype=E4M3), make_stepper(model, POLICY, kv_dtype=E4M3)
    static.graphs = StepGraphs("cpu", capture=False)
    run_pair(eager, static, model)
    assert eager.rings[0].k.dtype == E4M3 and static.graphs.static_runs == STEPS * (BLOCKS - 3)
    assert static._rebased == {i: 1 for i in range(STEPS)}


def test_step_api_from_mid_stream_and_rebuild_on_new_text():
    """The TPP stage's API (`step` per owned step, a subset of the steps), starting at a block
    whose ring position is already past the capacity, and a new text: the key changes, each
    static state is rebuilt and the output still matches."""
    model = tiny(torch.float32)
    own = [1, 3]  # what a pipeline rank owning steps 1 and 3 runs
    a, b = (BlockStepper(model, StreamConfig(), (8, 8), steps=own, offsets=SinkOffsets(seed=2), positions=POLICY)
            for _ in range(2))
    g = torch.Generator().manual_seed(4)
    text, ref, motion = (torch.randn(*s, generator=g) for s in ((5, model.cfg.text_dim), (1, 16, 1, 8, 8), (1, 16, 19, 8, 8)))
    for st in (a, b):
        st.set_text(text)
        st.prefill(ref, motion)
    b.graphs = StepGraphs("cpu", capture=False)
    text = torch.randn(7, model.cfg.text_dim, generator=torch.Generator().manual_seed(5))
    for n in range(20, 24):
        if n == 22:
            a.set_text(text)
            b.set_text(text)
        noise, feats = block_inputs(model, n)
        cond = torch.zeros_like(noise)
        xa, xb = noise, noise
        for i in own:
            xa = a.step(i, xa, n, a.audio(feats), cond)
            xb = b.step(i, xb, n, b.audio(feats), cond)
            assert torch.equal(xa, xb), f"block {n} step {i}"
    assert b.graphs.static_runs == 2 * 4 and b.graphs.builds == 2 * 2


def test_session_with_static_steps_equals_eager():
    """The wiring through Session (what a CUDA session runs, uncaptured here): 5 blocks of the
    bundled tiny model, across the ring filling up and the sink replacement, same video."""
    pipe = Pipeline.from_pretrained("tiny", quiet=True, max_area=64 * 64)  # 8x8 latent
    rng = np.random.default_rng(0)
    face = rng.integers(0, 256, (80, 72, 3), dtype=np.uint8)
    pcm = (0.3 * np.sin(np.arange(int(2.2 * 16000)) * 0.07) + 0.02 * rng.standard_normal(int(2.2 * 16000))).astype(np.float32)

    def run(static: bool):
        with pipe.session(face, seed=3) as sess:
            if static:
                sess.executor.stepper.graphs = StepGraphs("cpu", capture=False)
            sess.push_audio(pcm, 16000)
            sess.end_audio()
            blocks = list(sess.frames())
            g = sess.executor.stepper.graphs
            return blocks, ((g.static_runs, g.builds) if static else None)

    (eager, _), (static, counts) = run(False), run(True)
    assert len(eager) == len(static) == 5 and counts == (STEPS * 2, STEPS)  # blocks 3 and 4, one build
    for a, b in zip(eager, static):
        assert torch.equal(a.latent, b.latent) and np.array_equal(a.video, b.video), f"block {a.index}"


def test_stepper_with_static_steps_is_freed_by_refcount():
    """Session.close() drops its stepper to free the caches at once: the graphs must not form a
    reference cycle with the stepper (that would wait for the garbage collector)."""
    model = tiny(torch.float32)
    st = make_stepper(model)
    st.graphs = StepGraphs("cpu", capture=False)
    for n in range(5):
        noise, feats = block_inputs(model, n)
        st.denoise(noise, n, feats)
    assert st.graphs.builds == STEPS
    ref = weakref.ref(st.rings[0].k)
    gc.disable()
    try:
        del st
        assert ref() is None
    finally:
        gc.enable()


def test_cuda_graphs_switch():
    assert use_cuda_graphs(None, "cpu") is False and use_cuda_graphs(False, "cpu") is False
    with pytest.raises(ValueError, match="cuda_graphs=True needs a CUDA device, but the model runs on cpu"):
        use_cuda_graphs(True, "cpu")
    assert use_cuda_graphs(None, "cuda") is torch.cuda.is_available()
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="torch has no CUDA"):
            use_cuda_graphs(True, "cuda")
    for bad in ("on", 1):
        with pytest.raises(ValueError, match="cuda_graphs must be True, False or None"):
            StreamConfig(cuda_graphs=bad)
    model = tiny(torch.float32)
    assert BlockStepper(model, StreamConfig(), (8, 8)).graphs is None  # auto: off on CPU
    assert BlockStepper(model, StreamConfig(cuda_graphs=False), (8, 8)).graphs is None
    with pytest.raises(ValueError, match="needs a CUDA device"):
        BlockStepper(model, StreamConfig(cuda_graphs=True), (8, 8))  # forced on where it cannot work
    with pytest.raises(RuntimeError, match="CUDA graphs need a CUDA device"):
        StepGraphs("cpu", capture=True)


# ---- GPU: capture + replay against eager (skipped without CUDA, see tests/conftest.py) -------------

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cuda_graph_replay_equals_eager(dtype):
    model = tiny(dtype, "cuda")
    eager = make_stepper(model, POLICY)
    eager.graphs = None  # cuda_graphs=False
    graphs = make_stepper(model, POLICY)  # auto: on, on CUDA
    assert isinstance(graphs.graphs, StepGraphs) and graphs.graphs.capture
    run_pair(eager, graphs, model)
    torch.cuda.synchronize()
    assert graphs.graphs.builds == STEPS  # one capture per step: no re-capture at the sink replacement
    # block 3 is the warm-up run of each capture; blocks 4.. are replays
    assert all(g.replays == BLOCKS - 4 for g in graphs.graphs.graphs.values())


@pytest.mark.gpu
def test_cuda_graph_recaptures_on_new_text():
    model = tiny(torch.bfloat16, "cuda")
    eager, graphs = make_stepper(model, POLICY), make_stepper(model, POLICY)
    eager.graphs = None
    run_pair(eager, graphs, model, range(6))
    text = torch.randn(7, model.cfg.text_dim, generator=torch.Generator().manual_seed(5))
    eager.set_text(text)
    graphs.set_text(text)
    run_pair(eager, graphs, model, range(6, 9))
    assert graphs.graphs.builds == 2 * STEPS


def test_every_rank_loads_the_stream_config_rank_0_was_given():
    """The ring's ranks load with rank 0's from_pretrained keywords, cuda_graphs included."""
    import dataclasses

    from liveavatar_rt.config import StreamConfig
    from liveavatar_rt.parallel.launch import _load

    load = dict(name_or_path="tiny", device="cpu", dtype=torch.bfloat16, seed=0, force_provider=None,
                stream=dataclasses.replace(StreamConfig(), cuda_graphs=False), max_area=None)
    assert _load(load, 1).stream.cuda_graphs is False
    assert _load(dict(load, stream=None), 1).stream.cuda_graphs is None  # auto unless told
