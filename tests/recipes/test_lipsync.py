"""liveavatar_rt.eval.lipsync on generator frames, and its correlation helper."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from liveavatar_rt.eval.lipsync import lipsync_correlation, mouth_opening
from recipes.tiny.clips import HELDOUT_START
from recipes.tiny.faces import FaceRenderer
from recipes.tiny.identity import sample_identity
from recipes.tiny.make_eval_assets import EVAL_IDENTITIES
from recipes.tiny.motion import blinks, head_motion

EVAL = Path(__file__).resolve().parents[2] / "assets" / "eval"


def test_opening_tracks_ground_truth_on_generated_frames(clips):
    # several identities: light/dark skin, glasses, hats, long hair, patterned backgrounds
    for seed, c in clips.items():
        if c.mouth[:, 0].max() < 0.3:
            continue
        r, lag = lipsync_correlation(mouth_opening(c.frames, c.mouth_box), c.mouth[:, 0])
        assert r > 0.9 and lag == 0, (seed, r, lag)


def test_opening_with_eval_manifest_boxes():
    # the manifest box holds for any motion in the generator's range
    man = json.loads((EVAL / "manifest.json").read_text())
    truth = np.asarray(man["clips"][0]["mouth_open"][:80], np.float32)
    rng = np.random.default_rng(5)
    width = np.clip(0.5 + 0.4 * np.sin(np.arange(80) / 3), 0, 1)
    for ident in man["identities"]:
        img = np.asarray(Image.open(EVAL / ident["image"]).convert("RGB"))
        assert mouth_opening(img, ident["mouth_box"])[0] < 0.05  # reference: mouth closed
    for off, ident in zip(EVAL_IDENTITIES, man["identities"]):
        r = FaceRenderer(sample_identity(HELDOUT_START + off), 128)
        pose = head_motion(rng, 80, amount=1.0)
        bl = blinks(rng, 80)
        frames = np.stack([r.frame(pose[t], (truth[t], width[t]), bl[t]) for t in range(80)])
        rr, lag = lipsync_correlation(mouth_opening(frames, ident["mouth_box"]), truth)
        assert rr > 0.9 and lag == 0, (ident["name"], rr)


def test_correlation_finds_the_lag():
    rng = np.random.default_rng(0)
    truth = np.convolve(rng.random(200), np.ones(5) / 5, "same")
    late = np.concatenate([truth[:2] * 0, truth[:-2]])  # video 2 frames late
    r, lag = lipsync_correlation(late, truth, max_lag=3)
    assert lag == 2 and r > 0.99
    r0, lag0 = lipsync_correlation(late, truth, max_lag=0)
    assert lag0 == 0 and r0 < r
    r_neg, _ = lipsync_correlation(-truth, truth, max_lag=0)
    assert r_neg < -0.9
    assert math.isnan(lipsync_correlation(np.ones(50), truth[:50])[0])


def test_errors():
    frames = np.zeros((2, 64, 64, 3), np.uint8)
    with pytest.raises(ValueError, match="normalized"):
        mouth_opening(frames, (0.5, 0.5, 0.4, 0.6))
    with pytest.raises(ValueError, match="uint8"):
        mouth_opening(frames.astype(np.float32), (0.2, 0.2, 0.8, 0.8))
    with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
        mouth_opening(np.zeros((2, 64, 64), np.uint8), (0.2, 0.2, 0.8, 0.8))
    with pytest.raises(ValueError, match="frames"):
        lipsync_correlation(np.zeros(5), np.zeros(6))
