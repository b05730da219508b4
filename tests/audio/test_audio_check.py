"""`liveavatar-rt audio-check`: the deviation table of streaming vs offline wav2vec2 features."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from liveavatar_rt.cli import main

REPO = Path(__file__).resolve().parents[2]


def test_audio_check_table_on_a_published_layout_directory(tmp_path, capsys):
    pytest.importorskip("transformers")
    from tests.published_layout import build

    model = build(tmp_path / "published")
    speech = str(REPO / "assets/example/speech.wav")  # 4.8 s
    assert main(["audio-check", "--model", str(model), "--audio", speech, "--windows", "1,12",
                 "--lookahead", "0.08"]) == 0
    assert main(["audio-check", "--model", str(model), "--audio", speech, "--window", "12",
                 "--lookahead", "6"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if re.match(r"\s+\d+\.\d\d ", line)]
    assert len(rows) == 3
    short, long_window, whole = (float(r[2]) for r in rows)
    latents = [float(r[-1]) for r in rows]
    assert short > 0 and long_window > 0  # a window that ends 80 ms after the block is an approximation
    assert whole == 0.0 and latents[2] == 0.0  # a window over the whole utterance is the offline path
    assert latents[0] > 0
