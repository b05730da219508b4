"""Per-image conditioning cache (engine/conditioning.py): sessions on a cached image produce
exactly what they produce with the cache off, encode the image once, and never share decoding."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from liveavatar_rt.engine import Pipeline
from liveavatar_rt.engine.conditioning import ConditioningCache

SR = 16000


@pytest.fixture()
def pipe():
    p = Pipeline.from_pretrained("tiny", quiet=True, max_area=64 * 64)
    return p


def _face(shift: int = 0) -> np.ndarray:
    y, x = np.mgrid[0:80, 0:80]
    return np.stack([(x * 3 + shift) % 256, (y * 2) % 256, ((x + y) * 5) % 256], -1).astype(np.uint8)


def _speech(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)


def _count_encodes(pipe, monkeypatch) -> list:
    calls = []
    real = pipe.vae.encode
    monkeypatch.setattr(pipe.vae, "encode", lambda v: calls.append(tuple(v.shape)) or real(v))
    return calls


def test_cached_sessions_equal_uncached_ones_and_encode_once(pipe, monkeypatch):
    pcm = _speech(2.2)  # 5 blocks: across the sink replacement
    pipe.conditioning_cache = ConditioningCache(size=0)
    expected = pipe.generate(_face(), pcm, SR, seed=2).frames
    pipe.conditioning_cache = ConditioningCache(size=4)
    calls = _count_encodes(pipe, monkeypatch)
    first = pipe.generate(_face(), pcm, SR, seed=2).frames
    second = pipe.generate(_face(), pcm, SR, seed=2).frames  # a hit: its decoder forks the warm state
    third = pipe.generate(_face(), pcm, SR, seed=2).frames  # the second's decoding left no trace
    assert np.array_equal(first, expected) and np.array_equal(second, expected) and np.array_equal(third, expected)
    assert len(calls) == 2  # reference + motion, once
    assert (pipe.conditioning_cache.hits, pipe.conditioning_cache.misses) == (2, 1)


def test_a_different_image_is_not_served_from_the_cache(pipe, monkeypatch):
    a = pipe.session(_face(0))
    b = pipe.session(_face(1))  # one pixel value apart in the red channel
    assert not torch.equal(a.ref_latent, b.ref_latent)
    assert pipe.conditioning_cache.misses == 2 and len(pipe.conditioning_cache) == 2
    a.close()
    b.close()


def test_lru_eviction_and_clear(pipe):
    pipe.conditioning_cache = ConditioningCache(size=2)
    for shift in (0, 1, 2):
        pipe.session(_face(shift)).close()
    assert len(pipe.conditioning_cache) == 2
    pipe.session(_face(0)).close()  # evicted: computed again
    assert pipe.conditioning_cache.misses == 4
    pipe.conditioning_cache.clear()
    assert len(pipe.conditioning_cache) == 0


def test_forked_decoders_are_independent(pipe):
    """Decoding on one session decoder changes neither the warm state nor another decoder."""
    sess = pipe.session(_face())
    cond = pipe.conditioning_cache.get(pipe.vae, torch.zeros(3, 64, 64), pipe.stream.motion_frames, pipe.dtype)
    z = torch.randn(16, 3, 8, 8)
    f1, f2 = cond.new_decoder(), cond.new_decoder()
    out1 = f1.decode(z)
    f1.decode(torch.randn(16, 3, 8, 8))  # f1 moves on
    assert torch.equal(f2.decode(z), out1)
    assert torch.equal(cond.new_decoder().decode(z), out1)
    sess.close()


def test_the_decoder_is_warmed_once_and_only_when_a_session_needs_it(pipe, monkeypatch):
    """TPP's front takes only the latents: it must not pay the decoder warm-up."""
    streams = []
    real = pipe.vae.new_stream
    monkeypatch.setattr(pipe.vae, "new_stream", lambda: streams.append(1) or real())
    ref = torch.zeros(3, 64, 64)
    cond = pipe.conditioning_cache.get(pipe.vae, ref, pipe.stream.motion_frames, pipe.dtype)
    assert streams == []
    cond.new_decoder()
    cond.new_decoder()
    assert streams == [1]
