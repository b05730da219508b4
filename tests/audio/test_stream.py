import numpy as np
import pytest
import torch

from liveavatar_rt.audio import (AudioNotReady, AudioStream, LogMelFeatures, align_fixed_rate,
                                 published_num_clips, resample)
from tests.audio import random_chunks

FX = LogMelFeatures()


def _audio(seconds, rate, seed=0):
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    x = 0.3 * np.sin(2 * np.pi * 220 * t)[:, None] + 0.05 * rng.standard_normal((n, 2))
    return (x * 32767).astype(np.int16)  # stereo int16 [n, 2]


def _drain(s):
    n = s.total_blocks
    return [s.block_features(i) for i in range(n)], [s.block_pcm(i) for i in range(n)]


def test_chunk_invariance_and_matches_one_shot_pipeline():
    rate, pcm = 44100, _audio(1.3, 44100)
    ref = AudioStream(rate, FX)
    ref.push(pcm, rate)
    ref.end()
    feats, pcms = _drain(ref)
    assert ref.total_blocks == 3 and feats[0].shape == (25, 32, 12) and feats[0].dtype == torch.float32
    # the same numbers as the one-shot stages: resample -> log-mel -> fixed-rate alignment
    x16 = resample(pcm.astype(np.float64).mean(1).astype(np.float32) / 32768, rate)
    frames = align_fixed_rate(FX(x16))
    got = torch.cat(feats, dim=2).numpy()
    np.testing.assert_array_equal(got[:, :, :frames.shape[2]], frames)
    assert not got[:, :, frames.shape[2]:].any()  # frames past the end are zero
    np.testing.assert_array_equal(np.concatenate(pcms)[:x16.size], x16)
    rng = np.random.default_rng(0)
    for _ in range(3):  # chunks >= 9 samples: shorter stereo chunks would be ambiguous [ch, n]
        s = AudioStream(rate, FX)
        seen = []
        for c in random_chunks(pcm, rng, (9, 10, 77, 441, 5000, 20000)):
            s.push(c, rate)
            seen.append(s.blocks_ready())
        s.end()
        assert seen == sorted(seen)
        f2, p2 = _drain(s)
        for a, b in zip(feats + pcms, f2 + p2):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_mono_one_sample_chunks_16k():
    x = np.random.default_rng(1).standard_normal(9000).astype(np.float32) * 0.1
    a, b = AudioStream(16000, FX), AudioStream(FX)  # both constructor forms
    a.push(torch.from_numpy(x), 16000)
    for v in x:
        b.push(v[None], 16000)
    a.end(), b.end()
    for i in range(2):
        assert torch.equal(a.block_features(i), b.block_features(i))
        np.testing.assert_array_equal(a.block_pcm(i), b.block_pcm(i))


def test_video_frames_per_block():
    """Blocks are `video_frames_per_block` video frames (12 by default = 4 latent frames of
    StreamConfig.frames_per_block); another size regroups the same frames and PCM."""
    x = np.random.default_rng(2).standard_normal(19200).astype(np.float32) * 0.1  # 30 video frames
    a, b = AudioStream(16000, FX), AudioStream(16000, FX, video_frames_per_block=6)
    assert a.video_frames_per_block == 12 and b.video_frames_per_block == 6 and b.block_samples == 3840
    for s in (a, b):
        s.push(x, 16000)
        s.end()
    assert (a.total_blocks, b.total_blocks) == (3, 5)
    assert b.block_features(0).shape == (25, 32, 6)
    assert torch.equal(a.block_features(1), torch.cat([b.block_features(2), b.block_features(3)], dim=2))
    np.testing.assert_array_equal(a.block_pcm(1), np.concatenate([b.block_pcm(2), b.block_pcm(3)]))


def test_end_of_stream_padding_and_lengths():
    s = AudioStream(16000, FX)
    s.push(np.full(19200, 0.1, np.float32), 16000)  # 1.2 s = 30 video frames, 59 features
    assert s.blocks_ready() == 2 and s.total_blocks is None
    s.end()
    assert s.ended and s.total_blocks == 3 and s.blocks_ready() == 3
    produced = int((s._align.need(np.arange(100)) <= FX.n_frames(19200)).sum())
    assert produced == 29  # frame 29 would need feature 59 (0-based), one past the end
    f = s.block_features(2)
    assert (f[:, :, :5].abs().sum(dim=(0, 1)) > 0).all() and f[:, :, 5:].abs().sum() == 0
    p = s.block_pcm(2)
    assert p.shape == (7680,) and np.all(p[:3840] == np.float32(0.1)) and not p[3840:].any()
    assert s.block_features(7).abs().sum() == 0 and not s.block_pcm(7).any()  # past the end: silence
    assert s.total_blocks_for_clips(4) == 4 * published_num_clips(59) == 4


def test_errors():
    s = AudioStream(16000, FX)
    with pytest.raises(AudioNotReady, match="block 0 features is not available yet: 0 block"):
        s.block_features(0)
    s.push(np.zeros(5000, np.float32), 16000)
    with pytest.raises(AudioNotReady, match="not available yet"):
        s.block_pcm(0)
    with pytest.raises(ValueError, match="sample rate changed mid-stream from 16000 Hz to 44100 Hz"):
        s.push(np.zeros(100, np.float32), 44100)
    with pytest.raises(ValueError, match="zero-length"):
        s.push(np.zeros(0, np.float32), 16000)
    with pytest.raises(RuntimeError, match="only after end"):
        s.total_blocks_for_clips(4)
    s.end()
    with pytest.raises(RuntimeError, match="after end"):
        s.push(np.zeros(100, np.float32), 16000)
    s.block_features(0)
    s.release(0)
    with pytest.raises(AudioNotReady, match="released"):
        s.block_features(0)
    with pytest.raises(ValueError, match="required on the first push"):
        AudioStream(FX).push(np.zeros(10, np.float32))


def test_bounded_memory_over_ten_minutes():
    s = AudioStream(16000, FX)
    sec = (np.random.default_rng(2).standard_normal(16000) * 0.1).astype(np.float32)
    used, peak = 0, {}
    for _ in range(600):  # 10 minutes in 1 s chunks, consuming blocks as they become ready
        s.push(sec, 16000)
        while used < s.blocks_ready():
            s.block_features(used), s.block_pcm(used)
            s.release(used)
            used += 1
        for k, v in s.buffered().items():
            peak[k] = max(peak.get(k, 0), v)
    s.end()
    assert s.total_blocks == 1250 and used >= 1249
    assert peak["pcm16k"] <= 16000 + 7680 and peak["frames"] <= 25 + 12
    assert peak["feature_stream"] <= 400 + 16000 and peak["aligner"] <= 2 + 50
    assert s._pcm._data.shape[-1] <= 4 * (16000 + 7680) and s._frames._data.shape[-1] <= 4 * 64
