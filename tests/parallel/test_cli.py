"""`python -m liveavatar_rt.parallel`: locally spawned ring (spawn start method) and torchrun."""
from __future__ import annotations

import os
import re
import shutil
import sys
import wave

import numpy as np
import pytest
from PIL import Image

from .conftest import run_group
from .ring_run import SR, face, speech

HARD_TIMEOUT = 150


@pytest.fixture
def inputs(tmp_path):
    img, wav = tmp_path / "face.png", tmp_path / "speech.wav"
    Image.fromarray(face()).save(img)
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes((speech(2.2) * 32767).astype(np.int16).tobytes())
    return img, wav


def run(cmd, env=None) -> str:
    return run_group(cmd, " ".join(cmd[:3]), HARD_TIMEOUT, env)


ARGS = ["--max-area", "4096", "--timeout", "30"]


def test_local_spawn_cli_writes_the_video(tmp_path, inputs):
    img, wav = inputs
    out = tmp_path / "out.mp4"
    text = run([sys.executable, "-m", "liveavatar_rt.parallel", "--layout", "2", "--image", str(img),
                "--audio", str(wav), "--out", str(out), *ARGS])
    assert re.search(r"57 frames \([0-9.]+ s\), 64x64, layout 2\b", text), text
    assert out.stat().st_size > 0


@pytest.mark.skipif(shutil.which("torchrun", path=os.path.dirname(sys.executable)) is None, reason="no torchrun")
def test_torchrun_2_dit_ranks_plus_vae(tmp_path, inputs):
    from liveavatar_rt.parallel.launch import free_port

    img, wav = inputs
    out = tmp_path / "out.mp4"
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    text = run([torchrun, "--nproc_per_node", "3", "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
                "-m", "liveavatar_rt.parallel", "--layout", "2+1", "--image", str(img), "--audio", str(wav),
                "--out", str(out), *ARGS])
    assert re.search(r"57 frames \([0-9.]+ s\), 64x64, layout 2\+1", text), text
    assert out.stat().st_size > 0
