"""A short `liveavatar-rt eval` run on the tmp clip set: CSV, JSON and PNG are written with
every field, the ground-truth track handed to the lip-sync scorer is the looped truth shifted
by the engine's dropped start frames, and a cut-off run can be re-summarized from its CSV."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from liveavatar_rt.eval import longrun
from liveavatar_rt.eval.cli import main as eval_main
from liveavatar_rt.eval.clips import LoopedClips, load_clip_set
from liveavatar_rt.eval.longrun import ROW_FIELDS, EvalConfig, run_eval
from liveavatar_rt.eval.output import PLOTTED
from tests.eval.conftest import write_clip_set


@pytest.fixture(scope="module")
def eval_run(tmp_path_factory):
    """One 0.2-minute run (300 frames, 3 s windows) shared by the tests of this module."""
    root = tmp_path_factory.mktemp("eval")
    clips = write_clip_set(root)
    out = root / "out"
    rc = eval_main(["--minutes", "0.2", "--window", "3", "--clips", str(clips), "--json", str(out / "e.json")])
    return rc, out, clips


def test_outputs_have_every_field(eval_run):
    rc, out, _ = eval_run
    assert rc == 0
    with open(out / "e.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(ROW_FIELDS) and len(rows) == 4  # 12 s of video in 3 s windows
    assert float(rows[-1]["video_minutes"]) == pytest.approx(0.2)
    r = json.loads((out / "e.json").read_text())
    assert r["frames"] == 300 and r["drop"] == 0 and r["windows"] == 4  # the lead-in absorbs the published drop
    assert set(r["metrics"]) == set(PLOTTED)
    for name in ("colour_delta_e", "colour_hist_dist", "identity_dist", "flicker", "rss_mib"):
        m = r["metrics"][name]
        assert m["mean"] is not None and m["trend"]["n"] == 4
        assert set(m["trend"]) >= {"slope_per_minute", "p_value", "change_over_std"}
    assert isinstance(r["verdict"]["no_drift"], bool) and r["verdict"]["all_finite"] is True
    assert r["hardware"]["cpu_model"]
    assert (out / "e.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_from_csv_resummarizes(eval_run, tmp_path):
    _, out, _ = eval_run
    assert eval_main(["--from-csv", str(out / "e.csv"), "--json", str(tmp_path / "again.json")]) == 0
    a, b = (json.loads(p.read_text()) for p in (out / "e.json", tmp_path / "again.json"))
    assert a["metrics"] == b["metrics"] and (tmp_path / "again.png").is_file()


def test_truth_is_aligned_with_produced_frames(clip_set, monkeypatch):
    """Record what the lip-sync scorer receives: the concatenated windows' truth must be the
    looped clip truth from frame `drop` on (0: the session's lead-in silence fills the 3 frames
    the published stream start drops), and each window's frames must match its truth."""
    seen = []

    def mouth(frames, box):
        return np.zeros(len(frames))

    def corr(measured, truth, max_lag=2):
        assert len(measured) == len(truth)
        seen.append(np.asarray(truth))
        return 0.0, 0

    monkeypatch.setattr(longrun, "_lipsync_fns", lambda: (mouth, corr))
    res = run_eval(EvalConfig(minutes=0.1, window_seconds=1.0, clips_dir=str(clip_set)), log=None)
    got = np.concatenate(seen)
    cs = load_clip_set(clip_set)
    loop = LoopedClips(cs, "synthetic")
    truth = np.concatenate([loop.next_clip()[1] for _ in range(10)])
    assert res["drop"] == 0 and len(got) == res["frames"] == 150  # > 100 frames: the clips wrap
    np.testing.assert_array_equal(got, truth[:len(got)])
    assert all(r["lipsync_r"] == 0.0 for r in res["rows"])
    assert ("sha256" in res["weights"]) == (res["note"] == "")  # trained weights are identified


def test_config_errors(clip_set):
    with pytest.raises(ValueError, match="minutes"):
        EvalConfig(minutes=0)
    with pytest.raises(ValueError, match="schedule must be one of"):
        EvalConfig(schedule="eager")
    with pytest.raises(ValueError, match="identity 'nobody'"):
        run_eval(EvalConfig(minutes=0.1, identity="nobody", clips_dir=str(clip_set)), log=None)
