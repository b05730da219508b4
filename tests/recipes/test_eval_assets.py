"""assets/eval: manifest schema, files, sizes, held-out identities, truth vs audio, regeneration."""
import json
import wave
from pathlib import Path

import numpy as np
from PIL import Image

from recipes.tiny.clips import frame_rms
from recipes.tiny.make_eval_assets import make

EVAL = Path(__file__).resolve().parents[2] / "assets" / "eval"


def _wav(path):
    with wave.open(str(path)) as w:
        assert (w.getnchannels(), w.getsampwidth()) == (1, 2)
        return w.getframerate(), np.frombuffer(w.readframes(w.getnframes()), "<i2") / 32768.0


def test_manifest_schema_and_files():
    man = json.loads((EVAL / "manifest.json").read_text())
    assert set(man) == {"fps", "sample_rate", "identities", "clips"}
    assert man["fps"] == 25 and man["sample_rate"] == 16000
    assert len(man["identities"]) >= 4 and len(man["clips"]) >= 4
    names = set()
    for ident in man["identities"]:
        assert set(ident) == {"name", "image", "mouth_box"}
        img = Image.open(EVAL / ident["image"])
        assert img.size == (128, 128) and img.mode == "RGB"
        x0, y0, x1, y1 = ident["mouth_box"]
        assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
        names.add(ident["name"])
    for clip in man["clips"]:
        assert set(clip) == {"name", "audio", "identity", "mouth_open"}
        assert clip["identity"] in names
        rate, pcm = _wav(EVAL / clip["audio"])
        truth = np.asarray(clip["mouth_open"])
        assert rate == 16000 and len(pcm) == len(truth) * 640
        assert 6 <= len(pcm) / rate <= 10
        assert truth.min() >= 0 and truth.max() <= 1 and truth.max() > 0.5
        # the truth follows the speech energy at lag 0
        r = np.corrcoef(truth, frame_rms(pcm, len(truth)))[0, 1]
        assert r > 0.5, (clip["name"], r)
    total = sum(p.stat().st_size for p in EVAL.iterdir())
    assert total < 1.5e6


def test_regenerates_identically(tmp_path):
    make(tmp_path)
    for p in sorted(EVAL.iterdir()):
        assert (tmp_path / p.name).read_bytes() == p.read_bytes(), p.name
