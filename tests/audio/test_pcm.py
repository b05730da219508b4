import numpy as np
import pytest
import torch

from liveavatar_rt.audio import as_mono_float32


@pytest.mark.parametrize("pcm, rate, msg", [
    (np.zeros(0, np.float32), 16000, "zero-length"),
    (np.zeros((0, 2), np.float32), 16000, "zero-length"),
    (np.array([0.0, np.nan, 1.0, np.inf], np.float32), 16000, "2 non-finite .* first is at index 1"),
    (np.array([[0.0, 0.0], [0.0, np.nan]]), 16000, r"1 non-finite .* index \(1, 1\)"),
    (np.zeros(10, np.uint8), 16000, "unsupported audio dtype uint8"),
    (np.zeros(10, np.complex64), 16000, "unsupported audio dtype complex64"),
    (np.zeros((2, 2, 10), np.float32), 16000, "3-D"),
    (np.zeros(10, np.float32), 0, "must be positive"),
    (np.zeros(10, np.float32), -8000, "must be positive"),
    (np.zeros(10, np.float32), 999, "outside the supported range"),
    (np.zeros(10, np.float32), 400000, "outside the supported range"),
    (np.zeros(10, np.float32), 16000.5, "whole number"),
    (np.zeros((20, 20), np.float32), 16000, "no axis has <= 8 channels"),
    ([0.0, 1.0], 16000, "numpy array or torch tensor"),
])
def test_bad_input_raises_named_error(pcm, rate, msg):
    with pytest.raises(ValueError, match=msg):
        as_mono_float32(pcm, rate)


def test_int_scaling():
    x = np.array([-32768, 0, 16384, 32767], np.int16)
    np.testing.assert_array_equal(as_mono_float32(x, 16000), np.array([-1, 0, 0.5, 32767 / 32768], np.float32))
    y = np.array([-2**31, 2**30], np.int32)
    np.testing.assert_array_equal(as_mono_float32(y, 16000), np.array([-1, 0.5], np.float32))


def test_stereo_layouts_average():
    rng = np.random.default_rng(0)
    st = (rng.standard_normal((1000, 2)) * 8000).astype(np.int16)
    want = (st.astype(np.float64).mean(1) / 32768).astype(np.float32)
    np.testing.assert_array_equal(as_mono_float32(st, 44100), want)  # [n, ch]
    np.testing.assert_array_equal(as_mono_float32(st.T.copy(), 44100), want)  # [ch, n]
    np.testing.assert_array_equal(as_mono_float32(torch.from_numpy(st.T.copy()), 44100), want)
    assert as_mono_float32(np.ones((50, 1)), 16000).shape == (50,)


def test_float_dtypes_and_torch():
    x = np.linspace(-1, 1, 101)
    for a in (x, x.astype(np.float16), torch.tensor(x, dtype=torch.bfloat16), torch.tensor(x)):
        y = as_mono_float32(a, 16000)
        assert y.dtype == np.float32 and y.shape == (101,) and y.flags.c_contiguous
        np.testing.assert_allclose(y, x, atol=1e-2)
