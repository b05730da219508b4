"""The pipelined schedule (engine/pipelined.py, BlockStepper.step_rows): TPP in one process.

The one difference from the sequential schedule that is allowed is the GEMMs' accumulation order
(oneDNN / MKL pick other kernels for a taller batch). With every linear computed row by row
(`_rowwise_linears`), nothing else may differ: the rings, plans, audio tokens, cond states,
Euler updates, the sink-replacement drain and the decode order must reproduce the sequential
schedule bit for bit. With the real GEMMs, tests/golden checks the published outputs.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from liveavatar_rt.engine import Pipeline, StepRow
from liveavatar_rt.engine.executor import BlockJob
from liveavatar_rt.engine.pipelined import PipelinedExecutor
from tests.engine.conftest import block_inputs, make_stepper
from tests.engine.test_session import SR, face, speech  # noqa: F401  (face: a fixture)


def _rowwise_linears(ops) -> None:
    """ops.linear one batch row at a time: the same GEMM shapes whatever the batch height."""
    base = ops.linear

    def linear(x, weight, bias=None, dtype=None):
        return torch.cat([base(x[i:i + 1], weight, bias, dtype) for i in range(x.shape[0])])

    ops.linear = linear


@pytest.fixture(scope="module")
def pipes():
    """Random tiny weights, 64x64 video; the two schedules, each linear row by row."""
    out = {}
    for schedule in ("sequential", "pipelined"):
        p = Pipeline.from_pretrained("tiny", quiet=True, max_area=64 * 64, schedule=schedule)
        _rowwise_linears(p.model.ops)
        out[schedule] = p
    return out


def test_pipelined_generate_equals_sequential_bit_for_bit(pipes, face):
    """7 blocks: the batch fills (offline audio), the sink replacement at block 4 drains it, and it
    refills; frames, audio and latents equal the sequential schedule's."""
    pcm = speech(3.0, seed=2)
    runs = {}
    for schedule, p in pipes.items():
        with p.session(face, seed=5) as sess:
            sess.push_audio(pcm, SR)
            sess.end_audio()
            runs[schedule] = list(sess.frames(timeout=60))
    seq, pip = runs["sequential"], runs["pipelined"]
    assert len(seq) == len(pip) >= 6
    for a, b in zip(seq, pip):
        assert a.index == b.index
        assert torch.equal(a.latent, b.latent), f"block {a.index}"
        assert np.array_equal(a.video, b.video) and np.array_equal(a.audio, b.audio)
    # the fill: forwards of 1, 2, 3 and 4 rows (one per step), all charged to block 0
    assert pip[0].timings["rows"] == 2.5
    assert all("dit" in b.timings and "step0" not in b.timings for b in pip)
    assert "sink_replacement" in pip[4].timings


def test_live_audio_is_not_waited_for(pipes, face):
    """Audio for one block only: block 0 comes out (its steps run alone) without more audio."""
    pcm = speech(0.5)
    with pipes["pipelined"].session(face) as sess:
        sess.push_audio(pcm, SR)
        block = next(sess.frames(timeout=30))
        assert block.index == 0 and block.timings["rows"] == 1.0
        with pytest.raises(TimeoutError, match="block 1"):
            next(sess.frames(timeout=0.05))


def test_step_rows_one_row_is_step(tiny_fp32):
    """One row is exactly `step` (same plan, same ring write)."""
    a, b = make_stepper(tiny_fp32), make_stepper(tiny_fp32)
    for n in range(3):
        noise, feats = block_inputs(tiny_fp32, n)
        x_a, x_b = noise, noise
        audio = a.audio(feats)
        for i in a.steps:
            x_a = a.step(i, x_a, n, audio, torch.zeros_like(noise))
            (_, x_b), = b.step_rows([StepRow(i, n, x_b, audio, torch.zeros_like(noise))])
            assert torch.equal(x_a, x_b)
    assert all(torch.equal(ra.k, rb.k) and torch.equal(ra.v, rb.v) for ra, rb in zip(a.rings.values(), b.rings.values()))


def test_step_rows_refuses_bad_rows(tiny_fp32):
    st = make_stepper(tiny_fp32)
    noise, feats = block_inputs(tiny_fp32, 0)
    row = StepRow(0, 0, noise, st.audio(feats), torch.zeros_like(noise))
    with pytest.raises(ValueError, match="at least one row"):
        st.step_rows([])
    with pytest.raises(ValueError, match="distinct steps"):
        st.step_rows([row, StepRow(0, 1, noise, row.audio, row.cond_states)])
    with pytest.raises(ValueError, match="not owned"):
        st.step_rows([StepRow(7, 0, noise, row.audio, row.cond_states)])


def test_executor_depth_and_errors(pipes, face):
    p = pipes["pipelined"]
    with p.session(face) as sess:
        ex = sess.executor
        assert isinstance(ex, PipelinedExecutor) and ex.depth == p.stream.sampling_steps
        h, w = sess.ref_latent.shape[-2:]
        cfg = p.model.cfg

        def job(n, **kw):
            return BlockJob(n, torch.zeros(1, 16, 3, h, w, dtype=p.dtype),
                            torch.zeros(1, cfg.audio_layers, cfg.audio_dim, 12), **kw)

        with pytest.raises(RuntimeError, match="no block kept a sink"):
            ex.submit(job(0, resink=True))
        assert not ex.ready()
        with pytest.raises(RuntimeError, match="no result to take"):
            ex.take()
        for n in range(ex.depth):
            ex.submit(job(n))
        with pytest.raises(RuntimeError, match="blocks deep"):
            ex.submit(job(ex.depth))
        assert [ex.take().index for _ in range(ex.depth)] == list(range(ex.depth))


def test_schedule_is_checked():
    with pytest.raises(ValueError, match="schedule must be one of"):
        Pipeline.from_pretrained("tiny", quiet=True, schedule="eager")
    with pytest.raises(ValueError, match="TPP ring"):
        Pipeline.from_pretrained("tiny", quiet=True, layout="2+1", schedule="pipelined")


def test_time_embedding_is_kept_per_step_and_equals_the_model_call(tiny_fp32):
    """The stepper keeps time_embed(t) per (step, batch, frames): the call the forward would
    make, so the same bits; computed once."""
    st = make_stepper(tiny_fp32)
    for step in st.steps:
        kept = st.time_embedding(step, 1, 3)
        direct = tiny_fp32.time_embed(st.timesteps[step].expand(1, 3))
        assert all(torch.equal(a, b) for a, b in zip(kept, direct))
        assert st.time_embedding(step, 1, 3) is kept
