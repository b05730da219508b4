"""The TAEHV autoencoder recipe (recipes/tiny/train/{ae_data,tae}.py): its data mixes, the
rule that no photograph of a person is trained on, and a 2-step training run that resumes."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("skimage", reason="the photo sets are scikit-image's sample data")

from recipes.tiny.train import ae_data, tae  # noqa: E402

PEOPLE = {"astronaut.png", "camera.png", "grace_hopper.jpg", "lfw_subset.npy", "no_time_for_that_tiny.gif"}


def test_no_person_and_no_eval_photo_in_training():
    train = set(ae_data.TRAIN_PHOTOS)
    evals = {n.rpartition(":")[2] for n in ae_data.EVAL_PHOTOS}
    assert not train & PEOPLE and not train & evals
    assert {"astronaut.png", "camera.png", "grace_hopper.jpg"} <= evals
    assert "motorcycle_right.png" not in evals  # the other half of a training stereo pair


def test_clip_makers_are_deterministic_and_in_range():
    img = ae_data.load_photo(ae_data.TRAIN_PHOTOS[2])
    for make in (lambda r: ae_data.pan_clip(img, r, 8, 32), lambda r: ae_data.texture_clip(r, 8, 32)):
        a, b = make(np.random.default_rng(3)), make(np.random.default_rng(3))
        assert a.shape == (8, 32, 32, 3) and np.array_equal(a, b) and 0 <= a.min() and a.max() <= 1
    clip = ae_data.to_clip(ae_data.texture_clip(np.random.default_rng(0), 4, 16))
    assert clip.shape == (3, 4, 16, 16) and clip.min() >= -1 and clip.max() <= 1


def test_two_steps_train_and_resume(tmp_path, monkeypatch):
    from recipes.tiny.generate import generate

    generate(tmp_path / "data", clips=2, seconds=0.4, size=64, workers=1, progress=False)
    monkeypatch.setattr(tae, "evaluate", lambda model, **kw: {"psnr_proc": 0.0, "psnr_photo": 0.0, "decode_ms": 0.0})
    args = ["--data", str(tmp_path / "data"), "--run", str(tmp_path / "run"), "--batch", "3", "--crop", "32",
            "--val-every", "0", "--photo-frac", "0.34", "--texture-frac", "0.33"]
    tae.main([*args, "--steps", "2", "--enc-width", "4", "--dec-widths", "8,8,4,4"])
    with pytest.raises(SystemExit, match="cannot resume"):
        tae.main([*args, "--steps", "3", "--dec-widths", "16,8,8,8"])
    tae.main([*args, "--steps", "3"])  # resumes at the saved widths
    result = json.loads((tmp_path / "run" / "tae" / "result.json").read_text())
    assert result["step"] == 3 and result["arch"] == {"enc_width": 4, "dec_widths": [8, 8, 4, 4]}
    model = tae.load_trained_tae(tmp_path / "run")
    assert model.config.decoder_widths == (8, 8, 4, 4)
    assert model.decode(torch.zeros(16, 2, 4, 4)).shape == (3, 5, 32, 32)
    # a snapshot for the repo (--export), then a new run on another machine starts from it (--init)
    snap = tmp_path / "snap.safetensors"
    tae.main([*args, "--export", str(snap)])
    with pytest.raises(SystemExit, match="drop --enc-width"):
        tae.main([*args, "--run", str(tmp_path / "run2"), "--init", str(snap), "--enc-width", "8", "--steps", "4"])
    tae.main([*args, "--run", str(tmp_path / "run2"), "--init", str(snap), "--steps", "4"])
    result2 = json.loads((tmp_path / "run2" / "tae" / "result.json").read_text())
    assert result2["step"] == 4 and result2["arch"] == result["arch"]  # continued from step 3


def test_streams_targets_follow_the_decoded_frames():
    """Chunk c of a stream decodes frames 4Nc - 3 .. 4N(c+1) - 4 (3 trimmed at the stream start)."""

    class Frames:  # frame t of every sample has the value t
        def sample(self, batch, frames, crop):
            return torch.arange(frames, dtype=torch.float32).view(1, 1, frames, 1, 1).expand(batch, 3, frames, crop, crop)

    s = tae.Streams(Frames(), batch=2, crop=8, chunk=2, length=18)  # 16 usable frames: 2 chunks, then a new stream
    firsts = []
    for _ in range(3):
        x, target, enc, dec = s.next(trim=3)
        firsts.append((x[0, 0, 0, 0, 0].item(), target[0, 0, 0, 0, 0].item(), target.shape[2], enc is None))
        s.carry([None], tae.DecodeState([None], 5))
    assert firsts == [(0, 0, 5, True), (8, 5, 8, False), (0, 0, 5, True)]
