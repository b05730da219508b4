"""Face landmarks for the eval (eval/landmarks.py driving eval/face_worker.py in .venv-face):
MediaPipe FaceMesh finds the face of a real photograph and none in noise, the protocol carries
0 frames and many batches in order, a missing environment is an error naming `make face-env`,
a dead or stuck worker is an error within its deadline (never a hang), and a short eval run
writes the landmark columns.

The photograph is scikit-image's `data.astronaut()` (Eileen Collins, NASA, public domain),
used here only as evaluation input. It is loaded in this (runtime) process: the face env has no
scikit-image. Tests that run the real worker skip only when the face env is absent; `make test`
builds it first (`make face-env`), so in CI they run.
"""
from __future__ import annotations

import ast
import csv
import io
import json
import math
import sys
import time

import numpy as np
import pytest
from PIL import Image

from liveavatar_rt import envvars
from liveavatar_rt.eval import landmarks, longrun
from liveavatar_rt.eval.cli import main as eval_main
from liveavatar_rt.eval.landmarks import (FaceEnvMissing, FaceLandmarker, FaceWorkerError, Landmarks, correlation,
                                          frame_rms, window_measures)
from liveavatar_rt.eval.longrun import ROW_FIELDS, EvalConfig
from liveavatar_rt.eval.output import read_rows, summarize

needs_face_env = pytest.mark.skipif(not landmarks.face_env_available(),
                                    reason="no face landmark environment (.venv-face or $LIVEAVATAR_RT_FACE_PYTHON): "
                                           "`make face-env` creates it (`make test` does)")


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()  # uint8 [512, 512, 3] RGB


@pytest.fixture(scope="module")
def astronaut128(astronaut) -> np.ndarray:
    """The photograph at the eval's frame size (the face ~23 px wide)."""
    return np.asarray(Image.fromarray(astronaut).resize((128, 128), Image.BILINEAR))


def _noise(n: int, size: int = 128, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


# -- the real worker ---------------------------------------------------------------------------
@needs_face_env
def test_finds_the_face_of_a_photograph_and_none_in_noise(astronaut, astronaut128):
    with FaceLandmarker() as lm:  # video mode, as the eval runs it
        assert lm.info["mediapipe"] == "0.10.21" and lm.info["numpy"].startswith("1.")
        m = lm.measure(astronaut[None])
        assert m.found.tolist() == [True]
        assert 0 <= m.lip_gap[0] < 0.3  # inner-lip gap / face height: a closed-lip smile
        x0, y0, x1, y1 = m.box[0]
        # her face: about x 0.35-0.53, y 0.14-0.35 of the image
        assert 0.25 < x0 < 0.45 and 0.45 < x1 < 0.6 and 0.05 < y0 < 0.25 and 0.25 < y1 < 0.45
        small = lm.measure(np.stack([astronaut128] * 20))  # tracked from frame to frame at 128x128
        assert small.found.all() and np.all((small.lip_gap >= 0) & (small.lip_gap < 0.3))
        assert np.ptp(small.lip_gap) < 0.02 and np.allclose(small.box[:, 0], x0, atol=0.05)
        none = lm.measure(_noise(5))
        assert not none.found.any() and np.isnan(none.lip_gap).all() and np.isnan(none.box).all()


@needs_face_env
def test_protocol_zero_frames_and_many_batches_in_order(astronaut128):
    with FaceLandmarker(static=True, batch=16) as lm:  # static: each frame on its own
        empty = lm.measure(np.zeros((0, 128, 128, 3), np.uint8))
        assert len(empty) == 0 and empty.lip_gap.shape == (0,) and empty.box.shape == (0, 4)
        noise = _noise(100, seed=1)
        face = np.arange(100) % 3 == 0
        frames = np.where(face[:, None, None, None], astronaut128[None], noise)
        m = lm.measure(frames)  # 7 batches, the last one partial
        assert len(m) == 100 and m.found.tolist() == face.tolist()
        assert np.isfinite(m.lip_gap[face]).all() and np.isnan(m.lip_gap[~face]).all()
        assert lm.measure(np.zeros((0, 64, 64, 3), np.uint8)).found.shape == (0,)  # still in step
        other = lm.measure(np.ascontiguousarray(frames[::3, :96, :]))  # another frame size in the same stream
        assert len(other) == 34
        with pytest.raises(ValueError, match=r"uint8 \[T, H, W, 3\]"):
            lm.measure(frames[0])
    with pytest.raises(FaceWorkerError, match="closed"):
        lm.measure(frames[:1])


def test_worker_is_standalone():
    """face_worker.py runs in the face env: stdlib + numpy + mediapipe, never the runtime; its
    protocol constants are the driver's."""
    tree = ast.parse(landmarks.WORKER.read_text())
    mods, consts = set(), {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            mods |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            mods.add(node.module.split(".")[0])
    for node in tree.body:
        if isinstance(node, ast.Assign):
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                continue
            target = node.targets[0]
            names = [target] if isinstance(target, ast.Name) else target.elts
            values = [value] if isinstance(target, ast.Name) else value
            consts.update({n.id: v for n, v in zip(names, values)})
    assert mods == {"__future__", "json", "os", "struct", "sys", "numpy", "mediapipe"}, mods
    for name in ("FIELDS", "HELLO", "FRAMES", "RESULT"):
        assert consts[name] == getattr(landmarks, name), name


# -- errors: missing env, dead or stuck worker --------------------------------------------------
def test_missing_face_env_names_make_face_env(monkeypatch, tmp_path):
    monkeypatch.setenv(envvars.FACE_PYTHON, str(tmp_path / "nowhere" / "python"))
    assert envvars.face_python() == str(tmp_path / "nowhere" / "python")
    with pytest.raises(FaceEnvMissing, match="make face-env") as e:
        landmarks.face_python()
    assert "LIVEAVATAR_RT_FACE_PYTHON" in str(e.value) and "--no-landmarks" in str(e.value)
    assert not landmarks.face_env_available()
    monkeypatch.delenv(envvars.FACE_PYTHON)
    monkeypatch.setattr(landmarks, "DEFAULT_FACE_PYTHON", tmp_path / ".venv-face" / "bin" / "python")
    with pytest.raises(FaceEnvMissing, match=r"\.venv-face/bin/python.*make face-env"):
        FaceLandmarker()
    # eval: asked for, it stops before loading or writing anything; by default it says so and goes on
    with pytest.raises(SystemExit, match="make face-env"):
        eval_main(["--landmarks", "--minutes", "0.1", "--json", str(tmp_path / "e.json")])
    assert not (tmp_path / "e.csv").exists()
    log = io.StringIO()
    lm, note = longrun._landmarker(EvalConfig(), log)
    assert lm is None and "make face-env" in note and "make face-env" in log.getvalue()
    assert longrun._landmarker(EvalConfig(landmarks=False), log)[0] is None


def _fake_python(tmp_path, body: str):
    """An executable standing in for the face env's Python (it ignores `-I face_worker.py`)."""
    p = tmp_path / "fake_python"
    p.write_text(f"#!{sys.executable}\n{body}\n")
    p.chmod(0o755)
    return p


HELLO_THEN = ("import json, struct, sys, time\n"
              "h = json.dumps({'mediapipe': 'fake', 'numpy': 'fake', 'static': False}).encode()\n"
              "sys.stdout.buffer.write(b'LMK1' + struct.pack('<I', len(h)) + h); sys.stdout.buffer.flush()\n")


def test_a_dead_or_stuck_worker_is_an_error_not_a_hang(tmp_path):
    dead = _fake_python(tmp_path, "import sys; print('boom: no mediapipe here', file=sys.stderr); sys.exit(3)")
    with pytest.raises(FaceWorkerError, match=r"(?s)exited during the model load.*exit code 3.*boom.*make face-env"):
        FaceLandmarker(python=dead)
    t = time.monotonic()
    silent = _fake_python(tmp_path, "import time; time.sleep(60)")
    with pytest.raises(FaceWorkerError, match=r"no reply within 1 s \(the model load\)"):
        FaceLandmarker(python=silent, start_timeout=1)
    stuck = _fake_python(tmp_path, HELLO_THEN + "time.sleep(60)")  # greets, then reads nothing
    with FaceLandmarker(python=stuck, timeout=1, per_frame_timeout=0) as lm:
        assert lm.info["mediapipe"] == "fake"
        with pytest.raises(FaceWorkerError, match="no reply within 1 s"):
            lm.measure(np.zeros((1, 8, 8, 3), np.uint8))  # fits in the pipe: waits for the reply
    with FaceLandmarker(python=stuck, timeout=1, per_frame_timeout=0) as lm:
        with pytest.raises(FaceWorkerError, match="took no input"):
            lm.measure(np.zeros((64, 128, 128, 3), np.uint8))  # 3 MiB: the pipe fills
    assert time.monotonic() - t < 30
    garbage = _fake_python(tmp_path, HELLO_THEN + "sys.stdin.buffer.read(16); sys.stdout.buffer.write(b'NOPE' * 2)"
                           "; sys.stdout.buffer.flush(); time.sleep(60)")
    with FaceLandmarker(python=garbage, timeout=5) as lm:
        with pytest.raises(FaceWorkerError, match="bad reply header"):
            lm.measure(np.zeros((0, 8, 8, 3), np.uint8))


# -- the measures --------------------------------------------------------------------------------
def test_frame_rms_and_nan_aware_correlation():
    pcm = np.concatenate([np.full(640, 0.5), -np.full(640, 0.25), np.zeros(640)]).astype(np.float32)
    assert frame_rms(pcm, 640) == pytest.approx([0.5, 0.25, 0.0])
    rng = np.random.default_rng(0)
    truth = rng.random(200)
    late = np.concatenate([[0.0, 0.0], truth[:-2]])  # measured[t + 2] == truth[t]: the video is 2 frames late
    assert correlation(late, truth) == (pytest.approx(1.0), 2)
    holes = late.copy()
    holes[::4] = np.nan  # frames without a face are left out, not zeroed
    r, lag = correlation(holes, truth)
    assert r == pytest.approx(1.0) and lag == 2
    assert math.isnan(correlation(np.full(200, np.nan), truth)[0])
    assert math.isnan(correlation(np.ones(200), truth)[0])  # constant: r undefined
    with pytest.raises(ValueError, match="frames"):
        correlation(truth[:10], truth)


def test_window_measures():
    n = 50
    truth = np.abs(np.sin(np.arange(n) / 3))
    found = np.ones(n, bool)
    found[:10] = False
    gap = np.where(found, 0.1 * truth, np.nan)
    marks = Landmarks(found=found, lip_gap=gap, box=np.zeros((n, 4)))
    w = window_measures(marks, truth, 2 * truth + 1, pixel_opening=truth ** 2)
    assert set(w) == set(landmarks.WINDOW_FIELDS)
    assert w["face_rate"] == pytest.approx(0.8) and w["lm_gap"] == pytest.approx(np.nanmean(gap))
    assert w["lm_lip_r"] == pytest.approx(1.0) and w["lm_lip_lag"] == 0
    assert w["lm_loudness_r"] == pytest.approx(1.0) and 0.9 < w["lm_pixel_r"] < 1.0
    off = window_measures(None, truth, truth)
    assert all(math.isnan(v) for v in off.values())


def test_old_csv_without_landmark_columns_reads_as_nan(tmp_path):
    old = [k for k in ROW_FIELDS if k not in landmarks.WINDOW_FIELDS]
    path = tmp_path / "old.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=old)
        w.writeheader()
        for i in range(4):
            w.writerow({k: (i + 1 if k != "nonfinite" else 0) for k in old})
    rows = read_rows(path)
    assert list(rows[0]) == list(ROW_FIELDS) and math.isnan(rows[0]["face_rate"])
    s = summarize(rows)
    assert math.isnan(s["metrics"]["lm_lip_r"]["mean"]) and s["metrics"]["gen_fps"]["mean"] == 2.5


# -- a short eval run ------------------------------------------------------------------------------
@needs_face_env
def test_eval_run_writes_landmark_columns(tmp_path):
    """The tiny model on the bundled example portrait + speech, 0.1 min in 3 s windows."""
    from liveavatar_rt.eval.clips import DEFAULT_DIR

    out = tmp_path / "e.json"
    example = DEFAULT_DIR.parent / "example"
    assert eval_main(["--minutes", "0.1", "--window", "3", "--clips", str(example), "--json", str(out)]) == 0
    with open(out.with_suffix(".csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(ROW_FIELDS) and len(rows) == 2
    assert set(landmarks.WINDOW_FIELDS) <= set(rows[0])
    for row in rows:
        assert float(row["face_rate"]) > 0.9  # the generated face is a face to FaceMesh
        assert 0 <= float(row["lm_gap"]) < 0.3
        for k in ("lm_lip_r", "lm_loudness_r", "lm_pixel_r"):
            assert -1 <= float(row[k]) <= 1, (k, row[k])
        assert abs(float(row["lm_lip_lag"])) <= 2
    r = json.loads(out.read_text())
    assert r["landmarks"].startswith("MediaPipe FaceMesh (mediapipe 0.10.21")
    assert r["config"]["landmarks"] is None  # auto: on because the env exists
    for k in ("face_rate", "lm_gap", "lm_lip_r", "lm_loudness_r", "lm_pixel_r"):
        assert r["metrics"][k]["mean"] is not None
    assert "lm_lip_lag" not in r["metrics"]
