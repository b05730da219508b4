"""`liveavatar-rt generate` end to end: the MP4 decodes with the right frame count and duration."""
from __future__ import annotations

import re
import wave
from pathlib import Path

import numpy as np
import pytest

from liveavatar_rt.cli import main
from liveavatar_rt.io.video import probe

REPO = Path(__file__).resolve().parents[2]


def test_generate_writes_a_playable_mp4(tmp_path, capsys):
    wav = tmp_path / "a.wav"
    t = np.arange(int(1.3 * 22050)) / 22050
    pcm = (0.3 * np.sin(2 * np.pi * 220 * t) * 32767).astype(np.int16)
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(22050)
        w.writeframes(pcm.tobytes())
    out = tmp_path / "o.mp4"
    assert main(["generate", "--image", str(REPO / "assets/example/portrait.png"), "--audio", str(wav),
                 "--out", str(out), "--seed", "1"]) == 0
    info = probe(out)
    # 1.3 s = 32.5 video frames -> 3 blocks of 12 frames, minus the 3 dropped at the start
    assert info["video_frames"] == 3 * 12 - 3
    assert (info["width"], info["height"]) == (128, 128)
    assert abs(info["video_duration"] - 33 / 25) < 1e-6
    assert abs(info["audio_duration"] - 33 / 25) < 0.05
    text = capsys.readouterr().out
    assert "time to first frame" in text and "random weights" not in text  # the bundled trained model
    steady = re.search(r"steady state ([0-9.]+) fps after the first block = ([0-9.]+)x real time", text)
    assert steady, text  # 2 blocks after the first: a live stream's sustained rate is reported
    assert float(steady.group(2)) == pytest.approx(float(steady.group(1)) / 25, abs=0.01)


def test_generate_chooses_the_layout_in_one_place(monkeypatch):
    """--layout (alias --tpp), the graph switch, area and ring timeout reach from_pretrained; nothing else
    decides between one process and the ring."""
    from liveavatar_rt.engine import Pipeline

    seen = {}

    def fake(name, **kw):
        seen.update(kw, name=name)
        raise SystemExit(3)

    monkeypatch.setattr(Pipeline, "from_pretrained", staticmethod(fake))
    with pytest.raises(SystemExit):
        main(["generate", "--tpp", "2+1", "--image", "a.png", "--audio", "b.wav", "--out", "c.mp4", "--seed", "7",
              "--cuda-graphs", "off", "--max-area", "4096", "--timeout", "9", "--precision", "fp8"])
    assert seen["layout"] == "2+1" and seen["seed"] == 7 and seen["max_area"] == 4096 and seen["precision"] == "fp8"
    assert seen["stream"].cuda_graphs is False and seen["ring"].timeout == 9
    assert seen["schedule"] == "sequential"  # the default
    seen.clear()
    with pytest.raises(SystemExit):
        main(["generate", "--image", "a.png", "--audio", "b.wav", "--out", "c.mp4", "--schedule", "pipelined"])
    assert seen["schedule"] == "pipelined" and seen["layout"] == "1"


def test_cuda_graphs_on_without_cuda_is_a_clear_error(tmp_path):
    import pytest

    with pytest.raises(ValueError, match="cuda_graphs=True needs a CUDA device"):
        main(["generate", "--image", str(REPO / "assets/example/portrait.png"),
              "--audio", str(REPO / "assets/example/speech.wav"), "--out", str(tmp_path / "o.mp4"),
              "--cuda-graphs", "on"])
