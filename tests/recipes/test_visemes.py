"""Phoneme -> mouth targets, coarticulation smoothing, per-frame sampling."""
import numpy as np
import pytest

from recipes.tiny.visemes import mouth_track, targets


def test_targets_order_mouth_shapes():
    open_ = lambda n: targets(n)[0][0]  # noqa: E731
    width = lambda n: targets(n)[0][1]  # noqa: E731
    assert open_("p") == open_("b") == open_("m") == 0.0
    assert open_("a") > open_("@") > open_("i:")
    assert width("u:") < width("@") < width("i:")
    assert open_("_:") == 0.0
    assert len(targets("aI")) == 2 and targets("aI")[1][0] < targets("aI")[0][0]
    assert len(targets("zz-unknown")) == 1  # unknown names fall back instead of failing


def test_track_follows_phonemes_with_coarticulation():
    # silence, "ama" (open, closed, open), silence; 25 fps -> 40 ms frames
    ph = [("_", 0.0, 0.4), ("a", 0.4, 0.6), ("m", 0.6, 0.68), ("a", 0.68, 0.88), ("_", 0.88, 1.2)]
    tr = mouth_track(ph, 30)
    assert tr.shape == (30, 2) and tr.dtype == np.float32
    o = tr[:, 0]
    assert o[:8].max() < 0.05 and o[-5:].max() < 0.05  # closed in silence
    assert o[12] > 0.8 and o[19] > 0.8  # open on the vowels
    assert o[15] < 0.3  # lips close for the /m/ even though it is only 80 ms long
    assert 0.05 < o[9] < o[12]  # anticipation: opening starts before the vowel frames


def test_track_errors():
    with pytest.raises(ValueError, match="n_frames"):
        mouth_track([], 0)
