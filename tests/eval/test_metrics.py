"""Drift metrics, trend statistics and the clip-set manifest: exact values where they are
known, monotone responses to a controlled change, and errors that name the problem."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from liveavatar_rt.eval import metrics
from liveavatar_rt.eval.clips import LoopedClips, ManifestError, load_clip_set
from liveavatar_rt.eval.trend import betainc, linear_trend, t_two_sided_p
from tests.eval.conftest import _portrait


@pytest.fixture
def ref():
    return _portrait(64)


def test_identical_frames_have_zero_drift(ref):
    frames = np.stack([ref] * 3)
    assert np.allclose(metrics.colour_delta_e(frames, ref), 0)
    assert np.allclose(metrics.colour_histogram_distance(frames, ref), 0)
    assert np.allclose(metrics.identity_distance(frames, ref), 0, atol=1e-6)
    assert np.allclose(metrics.flicker(frames), 0) and metrics.flicker(frames).shape == (2,)


def test_metrics_grow_with_the_change(ref):
    tint = [np.clip(ref.astype(int) + [d, 0, -d], 0, 255).astype(np.uint8) for d in (0, 10, 30, 60)]
    de = metrics.colour_delta_e(np.stack(tint), ref)
    hist = metrics.colour_histogram_distance(np.stack(tint), ref)
    assert de[0] == 0 and np.all(np.diff(de) > 0) and np.all(np.diff(hist) > 0) and hist[-1] <= 1
    rng = np.random.default_rng(0)
    noisy = [np.clip(ref + rng.normal(0, s, ref.shape), 0, 255).astype(np.uint8) for s in (0, 20, 80)]
    idd = metrics.identity_distance(np.stack(noisy), ref)
    assert idd[0] < 1e-6 < idd[1] < idd[2]
    shifted = np.roll(ref, 8, axis=1)  # layout moved: identity distance rises, mean colour does not
    assert metrics.identity_distance(shifted[None], ref)[0] > idd[1] / 4
    assert metrics.colour_delta_e(shifted[None], ref)[0] < 1e-9


def test_known_values(ref):
    black, white = np.zeros((1, 4, 4, 3), np.uint8), np.full((4, 4, 3), 255, np.uint8)
    assert metrics.colour_delta_e(black, white)[0] == pytest.approx(100, abs=1e-3)  # L* 0 vs 100
    assert metrics.colour_histogram_distance(black, white)[0] == pytest.approx(1.0)
    assert metrics.flicker(np.concatenate([black, black + 10])).tolist() == [10.0]
    assert metrics.flicker(black, previous=white)[0] == 255.0


def test_metric_input_errors(ref):
    with pytest.raises(ValueError, match=r"uint8 \[T, H, W, 3\]"):
        metrics.flicker(ref)  # 3-D
    with pytest.raises(ValueError, match="reference must be uint8"):
        metrics.colour_delta_e(ref[None], ref[:32])
    with pytest.raises(ValueError, match=r"uint8 \[T, H, W, 3\]"):
        metrics.identity_distance(ref[None].astype(np.float32), ref)


def test_student_t_and_beta_known_values():
    assert betainc(2, 3, 0.4) == pytest.approx(0.5248, abs=1e-10)  # 1 - sum_{j<2} C(4,j) .4^j .6^(4-j)
    assert t_two_sided_p(2.0, 10) == pytest.approx(0.073388, abs=1e-5)
    assert t_two_sided_p(1.959964, 1e7) == pytest.approx(0.05, abs=1e-5)
    assert t_two_sided_p(0.0, 5) == pytest.approx(1.0)


def test_trend_detects_slope_and_not_noise():
    rng = np.random.default_rng(1)
    t = np.linspace(0, 60, 120)
    flat = linear_trend(t, 5 + rng.normal(0, 1, 120))
    ramp = linear_trend(t, 5 + 0.05 * t + rng.normal(0, 1, 120))
    assert flat["p_value"] > 0.01 and abs(flat["change_over_std"]) < 1
    assert ramp["p_value"] < 1e-6 and ramp["slope"] == pytest.approx(0.05, abs=0.015)
    walk = linear_trend(t, np.cumsum(rng.normal(0, 1, 120)))  # autocorrelated: n_eff shrinks
    assert walk["n_eff"] < 0.5 * walk["n"]
    few = linear_trend([0, 1], [1.0, 2.0])
    assert few["n"] == 2 and math.isnan(few["p_value"])
    with pytest.raises(ValueError, match="1-D of one length"):
        linear_trend([0, 1, 2], [1.0, 2.0])


def test_manifest_errors_name_the_entry(clip_set):
    m = json.loads((clip_set / "manifest.json").read_text())
    cs = load_clip_set(clip_set)
    assert cs.fps == 25 and list(cs.identities) == ["synthetic"] and len(cs.clips) == 2

    def broken(edit):
        bad = json.loads(json.dumps(m))
        edit(bad)
        (clip_set / "manifest.json").write_text(json.dumps(bad))
        with pytest.raises(ManifestError) as e:
            load_clip_set(clip_set)
        return str(e.value)

    assert "clips[1]: audio" in broken(lambda b: b["clips"][1].update(audio="missing.wav"))
    assert "mouth_box" in broken(lambda b: b["identities"][0].update(mouth_box=[0.6, 0.5, 0.4, 0.9]))
    assert "identity 'bob'" in broken(lambda b: b["clips"][0].update(identity="bob"))
    assert "mouth_open" in broken(lambda b: b["clips"][0].update(mouth_open=[]))
    with pytest.raises(ManifestError, match="does not exist"):
        load_clip_set(clip_set / "nowhere")


def test_looped_clips_cut_audio_to_truth(clip_set):
    loop = LoopedClips(load_clip_set(clip_set), "synthetic")
    for _ in range(3):  # wraps after 2
        pcm, truth = loop.next_clip()
        assert pcm.dtype == np.float32 and len(pcm) == 640 * len(truth)
