"""WindowedAudioStream: streaming wav2vec2 features with a bounded lookahead (audio/windowed.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from liveavatar_rt.audio.offline import OfflineAudioStream
from liveavatar_rt.audio.stream import AudioNotReady
from liveavatar_rt.audio.windowed import AudioWindow, WindowedAudioStream

SR = 16000
BLOCK = 7680  # samples per 12-frame block


@pytest.fixture(scope="module")
def w2v(tmp_path_factory):
    tf = pytest.importorskip("transformers", reason="wav2vec2 runs through transformers")
    from liveavatar_rt.audio import Wav2VecFeatures

    root = tmp_path_factory.mktemp("w2v")
    cfg = tf.Wav2Vec2Config(hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=24,
                            conv_dim=(8,) * 7, vocab_size=12, num_conv_pos_embeddings=8,
                            num_conv_pos_embedding_groups=2, do_stable_layer_norm=True, feat_extract_norm="layer")
    torch.manual_seed(0)
    tf.Wav2Vec2ForCTC(cfg).save_pretrained(str(root))
    tf.Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True).save_pretrained(str(root))
    return Wav2VecFeatures(root)


def speech(seconds: float, seed: int = 0) -> np.ndarray:
    g = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * 170 * t) * (1 + np.sin(2 * np.pi * 2.5 * t))
            + 0.05 * g.standard_normal(t.size)).astype(np.float32)


def run(features, pcm, window=AudioWindow(1.0, 0.08), chunks=(len,), end=True):
    s = WindowedAudioStream(features, window)
    i = 0
    sizes = [c(pcm) if callable(c) else c for c in chunks]
    while i < len(pcm):
        for c in sizes:
            s.push(pcm[i:i + c], SR)
            i += c
    if end:
        s.end()
    return s


def test_block_features_depend_only_on_audio_up_to_the_lookahead(w2v):
    pcm = speech(3.0)
    win = AudioWindow(1.0, 0.08)
    a = run(w2v, pcm, win)
    n = 2
    cut = (n + 1) * BLOCK + 1280  # block 2's end + 80 ms
    other = pcm.copy()
    other[cut:] = speech(3.0, seed=9)[cut:]  # different audio after the lookahead
    b = run(w2v, other, win)
    assert torch.equal(a.block_features(n), b.block_features(n))
    assert not torch.equal(a.block_features(n + 2), b.block_features(n + 2))  # later blocks see it
    # and the block is ready exactly when that audio is there (before end())
    s = WindowedAudioStream(w2v, win)
    s.push(pcm[:cut - 1], SR)
    assert s.blocks_ready() == n
    s.push(pcm[cut - 1:cut], SR)
    assert s.blocks_ready() == n + 1
    assert torch.equal(s.block_features(n), a.block_features(n))
    with pytest.raises(AudioNotReady, match="block 3"):
        s.block_features(3)


def test_any_chunking_gives_identical_features_and_pcm(w2v):
    pcm = speech(2.3)
    whole = run(w2v, pcm)
    for chunks in [(160,), (1, 999, 7680), (12345,)]:
        s = run(w2v, pcm, chunks=chunks)
        assert s.total_blocks == whole.total_blocks == 5
        for n in range(s.total_blocks):
            assert torch.equal(s.block_features(n), whole.block_features(n)), (chunks, n)
            assert np.array_equal(s.block_pcm(n), whole.block_pcm(n))


def test_a_window_covering_the_utterance_is_the_offline_path_bit_for_bit(w2v):
    pcm = speech(2.3)
    off = OfflineAudioStream(w2v)
    off.push(pcm, SR)
    off.end()
    s = run(w2v, pcm, AudioWindow(window_s=6.0, lookahead_s=3.0), chunks=(4000,))
    for n in range(s.total_blocks):
        assert torch.equal(s.block_features(n), off.block_features(n)), n
        assert np.array_equal(s.block_pcm(n), off.block_pcm(n))
    # a short window is a different (approximate) computation: the test above can fail
    short = run(w2v, pcm, AudioWindow(1.0, 0.08))
    assert not torch.equal(short.block_features(3), off.block_features(3))


def test_release_keeps_what_later_windows_need(w2v):
    pcm = speech(4.0)
    ref = run(w2v, pcm)
    s = run(w2v, pcm, end=False)
    got = []
    for n in range(s.blocks_ready()):
        got.append(s.block_features(n))
        s.release(n)
    s.end()
    for n in range(len(got), s.total_blocks):
        got.append(s.block_features(n))
        s.release(n)
    assert all(torch.equal(g, ref.block_features(n)) for n, g in enumerate(got))
    assert len(s._pcm) <= AudioWindow(1.0).window_s * SR + 2 * BLOCK  # bounded, not the whole stream
    with pytest.raises(AudioNotReady, match="released"):
        s.block_pcm(0)


def test_window_must_hold_a_block_and_its_lookahead(w2v):
    with pytest.raises(ValueError, match="must cover a block"):
        WindowedAudioStream(w2v, AudioWindow(window_s=0.5, lookahead_s=0.08))
    with pytest.raises(ValueError, match="lookahead_s must be >= 0"):
        WindowedAudioStream(w2v, AudioWindow(window_s=2.0, lookahead_s=-0.1))
