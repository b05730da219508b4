import numpy as np
import pytest

from liveavatar_rt.audio import StreamingResampler, resample
from tests.audio import random_chunks


@pytest.mark.parametrize("rate", [44100, 48000, 8000, 22050, 16000, 11025])
def test_chunk_invariance_bit_exact(rate):
    rng = np.random.default_rng(rate)
    x = rng.standard_normal(rate // 5).astype(np.float32)
    ref = resample(x, rate, 16000)
    assert ref.shape == (-(-x.size * 16000 // rate),) and ref.dtype == np.float32
    for trial in range(2):
        rs = StreamingResampler(rate, 16000)
        out = [rs.push(c) for c in random_chunks(x, rng)] + [rs.flush()]
        np.testing.assert_array_equal(np.concatenate(out), ref)


def test_one_sample_chunks():
    x = np.random.default_rng(1).standard_normal(2000).astype(np.float32)
    rs = StreamingResampler(44100)
    out = []
    for v in x:
        out += [rs.push(x[:0]), rs.push(np.array([v], np.float32))]
    np.testing.assert_array_equal(np.concatenate(out + [rs.flush()]), resample(x, 44100))


def test_sine_accuracy_and_stopband():
    sr = 44100
    t = np.arange(sr) / sr
    y = resample((0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32), sr, 16000)
    n = np.arange(y.size)
    ref = 0.5 * np.sin(2 * np.pi * 1000 * n / 16000)
    assert np.abs(y - ref)[200:-200].max() < 1e-5  # right frequency, amplitude and phase
    # passband flat to 0.45 * 16 kHz, alias of a 9 kHz tone (-> 7 kHz) below -80 dB
    flat = resample(np.sin(2 * np.pi * 7200 * t).astype(np.float32), sr, 16000)[300:-300]
    assert abs(20 * np.log10(np.sqrt(2) * flat.std())) < 0.01
    alias = resample(np.sin(2 * np.pi * 9000 * t).astype(np.float32), sr, 16000)[300:-300]
    assert 20 * np.log10(np.sqrt(2) * alias.std()) < -80


def test_upsampling_sine():
    sr = 8000
    t = np.arange(sr) / sr
    y = resample(np.sin(2 * np.pi * 440 * t).astype(np.float32), sr, 16000)
    ref = np.sin(2 * np.pi * 440 * np.arange(y.size) / 16000)
    assert np.abs(y - ref)[300:-300].max() < 1e-4


def test_identity_and_state():
    x = np.random.default_rng(2).standard_normal(999).astype(np.float32)
    np.testing.assert_array_equal(resample(x, 16000, 16000), x)
    rs = StreamingResampler(48000)
    for _ in range(200):
        rs.push(np.zeros(480, np.float32))
        assert rs.state_samples <= rs.K + 480  # bounded state
    rs.flush()
    with pytest.raises(RuntimeError, match="after flush"):
        rs.push(x)
