"""The bundled trained `tiny` model (liveavatar_rt/weights/tiny.safetensors) on a held-out
identity it never saw (assets/eval id0): its frames must look like the reference portrait far
more than the same pipeline on random weights does (a regression test that the shipped file is
the trained model and still loads into the runtime correctly), stay finite, and stream.

Lip sync is asserted in test_tiny_lipsync.py, the absence of identity drift over a 10-minute
stream in test_tiny_drift.py.
Measured when written (v1): colour Delta E 15.7 trained vs 38.9 random, identity distance 0.25
vs 0.46; v2 (shipped): 12.4 and 0.24.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from liveavatar_rt.engine import Pipeline
from liveavatar_rt.engine.pipeline import PACKAGED_WEIGHTS
from liveavatar_rt.eval import metrics
from liveavatar_rt.eval.longrun import reference_frame
from liveavatar_rt.io.audio_file import read_audio

ASSETS = Path(__file__).resolve().parents[2] / "assets" / "eval"
IMAGE, AUDIO = str(ASSETS / "id0.png"), str(ASSETS / "clip0.wav")


def _scores(pipe):
    pcm, rate = read_audio(AUDIO)
    video = pipe.generate(IMAGE, pcm[: 2 * rate], rate)
    ref = reference_frame(IMAGE, pipe)
    return video.frames, metrics.colour_delta_e(video.frames, ref).mean(), metrics.identity_distance(video.frames, ref).mean()


def test_trained_tiny_looks_like_the_reference_and_random_weights_do_not(monkeypatch):
    if not (PACKAGED_WEIGHTS / "tiny.safetensors").is_file():
        pytest.fail("liveavatar_rt/weights/tiny.safetensors is missing: the trained tiny model must ship")
    monkeypatch.delenv("LIVEAVATAR_RT_TINY_RANDOM", raising=False)
    trained = Pipeline.from_pretrained("tiny", quiet=True)
    assert trained.note == ""
    frames, de_t, id_t = _scores(trained)
    assert frames.shape[1:] == (128, 128, 3) and np.isfinite(frames).all()
    monkeypatch.setenv("LIVEAVATAR_RT_TINY_RANDOM", "1")
    _, de_r, id_r = _scores(Pipeline.from_pretrained("tiny", quiet=True))
    assert de_t < 0.6 * de_r, f"colour Delta E trained {de_t:.1f} vs random {de_r:.1f}"
    assert id_t < 0.7 * id_r, f"identity distance trained {id_t:.3f} vs random {id_r:.3f}"
