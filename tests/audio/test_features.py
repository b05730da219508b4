import numpy as np

from liveavatar_rt.audio import LogMelFeatures
from tests.audio import random_chunks


def _speechy(n, seed=0):
    """Noise bursts + a gliding tone: a signal whose features change over time."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    env = (np.sin(2 * np.pi * 3 * t) > 0).astype(np.float64)
    x = 0.3 * np.sin(2 * np.pi * (200 + 300 * t) * t) + 0.1 * env * rng.standard_normal(n)
    return x.astype(np.float32)


def test_shape_values_and_frame_count():
    fx = LogMelFeatures()
    for n in (0, 399, 400, 719, 720, 16000):
        assert fx(np.zeros(n, np.float32)).shape == (25, 32, fx.n_frames(n))
    assert fx.n_frames(16000) == 49  # wav2vec2's count for 1 s
    f = fx(_speechy(16000))
    assert f.dtype == np.float32 and np.isfinite(f).all() and np.abs(f).max() < 5  # O(1)
    silence = fx(np.zeros(800, np.float32))
    assert -3 < silence.mean() < -1.5


def test_stream_equals_one_shot_any_chunking():
    fx = LogMelFeatures()
    x = _speechy(8000, seed=3)
    ref = fx(x)
    rng = np.random.default_rng(0)
    for sizes in [(0, 1, 2, 3, 7, 64, 500, 3000), (1,), (321, 4000)]:
        s = fx.stream()
        chunks = random_chunks(x[:1500] if sizes == (1,) else x, rng, sizes)
        got = np.concatenate([s.push(c) for c in chunks] + [s.flush()], axis=2)
        want = fx(x[:1500]) if sizes == (1,) else ref
        np.testing.assert_array_equal(got, want)
        assert s.state_samples == 0


def test_causal_bounded_lookahead():
    fx = LogMelFeatures()
    x = _speechy(6400, seed=5)
    i = 7  # frame 7 depends only on samples < 7*320 + 400
    y = x.copy()
    y[i * fx.hop + fx.win:] = 0.9
    np.testing.assert_array_equal(fx(x)[:, :, :i + 1], fx(y)[:, :, :i + 1])
    assert not np.array_equal(fx(x)[:, :, i + 1], fx(y)[:, :, i + 1])
    assert fx.lookahead_samples == 80


def test_ema_layers_get_smoother():
    f = LogMelFeatures()(_speechy(32000, seed=7))
    rough = np.abs(np.diff(f, axis=2)).mean(axis=(1, 2))  # frame-to-frame change per layer
    assert np.all(np.diff(rough) < 0)
    np.testing.assert_array_equal(f[1:, :, 0], np.repeat(f[:1, :, 0], 24, 0))  # y[0] = x[0]


def test_many_mels_is_finite():
    f = LogMelFeatures(n_mels=256, layers=3)(_speechy(2000))
    assert f.shape == (3, 256, 6) and np.isfinite(f).all()
