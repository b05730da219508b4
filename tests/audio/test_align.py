import math

import numpy as np
import pytest
import torch

from liveavatar_rt.audio import StreamingAligner, align_fixed_rate, align_offline, published_num_clips
from liveavatar_rt.audio.align import video_to_mid_index
from tests.audio import random_chunks


def _published_reference(feat, fps=25, batch_frames=48):
    """Straightforward loop transcription of the published formulas (Wan S2V audio encoder):
    linear_interpolation(50 -> 30, align_corners) then get_audio_embed_bucket_fps(m=0).
    The source position is formed in float32 as torch's CPU interpolate does for fp32 input."""
    L, D, T = feat.shape
    t30 = int(T / 50.0 * 30)
    mid = np.zeros((L, D, t30))
    for j in range(t30):
        scale = np.float32(T - 1) / np.float32(t30 - 1) if t30 > 1 else np.float32(0)
        pos = np.float32(scale * np.float32(j))
        i0 = min(int(math.floor(pos)), T - 1)
        w = float(np.float32(pos - np.float32(i0)))
        i1 = min(i0 + 1, T - 1)
        mid[:, :, j] = (1 - w) * feat[:, :, i0] + w * feat[:, :, i1]
    scale = 30 / fps
    min_batch_num = int(t30 / (batch_frames * scale)) + 1
    bucket_num = min_batch_num * batch_frames
    padd = math.ceil(min_batch_num * batch_frames / fps * 30) - t30
    total = t30 + padd
    duration = bucket_num / fps
    times = np.linspace(0, duration, bucket_num, endpoint=False)
    idx = np.clip(np.round(times * 30).astype(int), 0, total - 1)
    out = np.zeros((L, D, bucket_num))
    for k, bi in enumerate(idx):
        if bi < t30:
            out[:, :, k] = mid[:, :, bi]
    return out, min_batch_num


@pytest.mark.parametrize("t50", [2, 5, 49, 96, 101, 480, 1001])
def test_offline_matches_published_formulas(t50):
    feat = np.random.default_rng(t50).standard_normal((3, 4, t50)).astype(np.float32)
    want, clips = _published_reference(feat)
    got = align_offline(torch.from_numpy(feat))
    assert got.shape == want.shape and got.dtype == torch.float32
    assert published_num_clips(t50) == clips
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=2e-6)
    nz = (np.abs(want).sum(axis=(0, 1)) > 0)
    np.testing.assert_array_equal(got.abs().sum(dim=(0, 1)).numpy() > 0, nz)  # same zero frames


def test_offline_exact_multiple_adds_a_clip():
    # T30 = int(480 * 0.6) = 288 = 5 * 57.6: published makes 6 clips, the last one silent.
    assert published_num_clips(480) == 6
    assert align_offline(torch.ones(1, 1, 480))[..., 240:].abs().sum() == 0


def test_video_index_is_round_1_2k():
    k = np.arange(5000)
    np.testing.assert_array_equal(video_to_mid_index(k), np.round(k * 1.2).astype(int))
    np.testing.assert_array_equal(video_to_mid_index(k), (6 * k + 2) // 5)


def test_streaming_equals_own_one_shot():
    feat = np.random.default_rng(1).standard_normal((2, 3, 333)).astype(np.float32)
    ref = align_fixed_rate(feat)
    assert ref.shape == (2, 3, 167)  # need(166) = 333 features
    rng = np.random.default_rng(2)
    for _ in range(3):
        a = StreamingAligner()
        got = np.concatenate([a.push(c) for c in random_chunks(feat, rng, (0, 1, 2, 5, 40), axis=2)], axis=2)
        np.testing.assert_array_equal(got, ref)
        assert a.state_features <= 2


def test_streaming_lookahead_and_mapping():
    a = StreamingAligner()
    k = np.arange(10000)
    assert np.all(a.need(k) <= 2 * k + 2)  # frame k needs features 0..2k+1 at most
    ramp = np.arange(300, dtype=np.float32)[None, None]
    got = align_fixed_rate(ramp)[0, 0]
    np.testing.assert_allclose(got, video_to_mid_index(np.arange(got.size)) * 5 / 3, atol=1e-4)


def test_offline_vs_streaming_difference_is_bounded():
    # Offline positions run ahead of 5j/3 by at most 7/3 feature frames, 0 at the start.
    for t50 in (200, 2000):
        ramp = torch.arange(t50, dtype=torch.float64)[None, None]
        off = align_offline(ramp)[0, 0].numpy()
        fix = align_fixed_rate(ramp.numpy())[0, 0]
        n = min(fix.size, int((off > 0).sum()) + 1)
        d = off[:n] - fix[:n]
        assert d[0] == 0 and d.min() > -1e-3 and d.max() < 7 / 3
        assert d[: n // 10].max() < 0.1 * 7 / 3 + 1e-3  # shrinks towards the start
