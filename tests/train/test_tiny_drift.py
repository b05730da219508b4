"""The bundled trained tiny model holds its identity over a 10-minute stream.

A held-out face (assets/eval id0) speaks the held-out clips, looped, for 10 minutes of video
(15 000 frames, 1 250 blocks) through the streaming engine with `decode=False`: every block is
denoised exactly as in `make demo` (ring caches, RoPE positions far from the start, sink
replacement), but only probe windows are decoded, which keeps the test at a few minutes.
A probe decodes 2 blocks with a fresh streaming VAE decoder warmed on the 3 blocks before them;
`test_probe_decode_matches_the_continuous_decode` checks that shortcut against decoding the
whole stream.

The identity statistics of the probes (colour Delta E and the gradient-descriptor identity
distance against the reference, `liveavatar_rt.eval.metrics`) must show no trend under the
rule of the 1-hour eval (`eval/output.py`: p < 0.01 AND a change over the run larger than
1 std of the metric), and every latent must be finite.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from liveavatar_rt.engine.executor import to_uint8
from liveavatar_rt.eval import metrics
from liveavatar_rt.eval.clips import load_clip_set
from liveavatar_rt.eval.longrun import reference_frame
from liveavatar_rt.eval.output import TREND_MIN_CHANGE_OVER_STD, TREND_P
from liveavatar_rt.eval.trend import linear_trend
from liveavatar_rt.io.audio_file import read_audio

MINUTES = 10
PROBES = 20  # one every 30 s of video
WARM = 3  # blocks a probe's decoder is warmed on: its causal cache forgets within ~2 blocks
IDENTITY = "id0"


@pytest.fixture(scope="module")
def pipe(trained_tiny):
    return trained_tiny


def _speech(seconds: float) -> tuple[np.ndarray, int]:
    """The held-out clips of every identity, looped to `seconds` -> (pcm [n], rate)."""
    cs = load_clip_set()
    parts, rate = [], None
    for clip in cs.clips:
        pcm, r = read_audio(str(clip.audio))
        if rate not in (None, r):
            raise AssertionError(f"clip set mixes sample rates ({rate}, {r})")
        parts.append(pcm)
        rate = r
    one = np.concatenate(parts)
    return np.resize(one, int(seconds * rate) + rate), rate


def _probe_frames(pipe, warm: list[torch.Tensor], latents: list[torch.Tensor]) -> np.ndarray:
    """Decode `latents` (block latents [1, 16, F, h, w]) with a new streaming decoder whose
    causal cache was warmed on the blocks `warm` -> uint8 frames [12 * len(latents), H, W, 3]."""
    dec = pipe.vae.new_stream()
    dec.decode(torch.cat(warm, dim=2)[0].float())  # its output is the warm-up, dropped
    return np.concatenate([to_uint8(dec.decode(z[0].float())).numpy() for z in latents])


def _image(pipe) -> str:
    return str(load_clip_set().identities[IDENTITY].image)


@pytest.fixture(scope="module")
def stream(pipe):
    """-> (probe minutes [PROBES], probe frames [[24, H, W, 3]], all latents finite)."""
    fps, F = pipe.stream.fps, 4 * pipe.stream.frames_per_block
    blocks = MINUTES * 60 * fps // F
    every = blocks // PROBES
    probe_at = {every * (i + 1) - 2 for i in range(PROBES)}  # probe = blocks k, k+1, warmed on k-WARM..k-1
    pcm, rate = _speech(MINUTES * 60 + 1)
    minutes, frames, finite, recent, pending = [], [], True, [], None
    with torch.inference_mode(), pipe.session(_image(pipe), seed=0, decode=False) as sess:
        sess.push_audio(pcm, rate)
        sess.end_audio()
        for block in sess.frames():
            if block.index >= blocks:
                break
            z = block.latent
            finite &= bool(torch.isfinite(z).all())
            if pending is not None:
                frames.append(_probe_frames(pipe, pending[0], [pending[1], z]))
                minutes.append((block.index + 1) * F / fps / 60)
                pending = None
            if block.index in probe_at:
                pending = (list(recent), z)
            recent = (recent + [z])[-WARM:]
    return np.array(minutes), frames, finite


def test_identity_does_not_trend_over_ten_minutes(pipe, stream):
    minutes, frames, finite = stream
    assert finite, "a latent of the 10-minute stream is not finite"
    assert len(frames) == PROBES and minutes[-1] == pytest.approx(MINUTES, abs=0.5)
    ref = reference_frame(_image(pipe), pipe)
    for name, fn in (("colour_delta_e", metrics.colour_delta_e), ("identity_dist", metrics.identity_distance)):
        y = np.array([fn(f, ref).mean() for f in frames])
        tr = linear_trend(minutes, y)
        trending = tr["p_value"] < TREND_P and abs(tr["change_over_std"]) > TREND_MIN_CHANGE_OVER_STD
        assert not trending, (f"{name} trends over {MINUTES} min: slope {tr['slope']:.4g}/min, p {tr['p_value']:.3g}, "
                              f"change {tr['change']:.3g} = {tr['change_over_std']:.2f} std; values {np.round(y, 3)}")


def test_probe_decode_matches_the_continuous_decode(pipe):
    """The probe shortcut (fresh decoder warmed on one block) against the session's own decoder
    that has decoded the stream from its start: blocks 9-10 of a short stream."""
    pcm, rate = _speech(8)
    with torch.inference_mode(), pipe.session(_image(pipe), seed=0) as sess:
        sess.push_audio(pcm, rate)
        sess.end_audio()
        blocks = list(sess.frames())[:11]
    full = np.concatenate([b.video for b in blocks[9:11]]).astype(np.float32)
    probe = _probe_frames(pipe, [b.latent for b in blocks[9 - WARM:9]], [b.latent for b in blocks[9:11]])
    probe = probe.astype(np.float32)
    assert full.shape == probe.shape
    # uint8 levels; the decoders differ only through their caches' memory of blocks 0-5. Measured
    # when written: 0.08 warmed on 3 blocks (4.5 on 1 block: then this test fails)
    diff = np.abs(full - probe).mean()
    assert diff < 0.5, f"probe decode differs from the continuous decode by {diff:.2f} levels on average"
