"""A small clip set in the assets/eval manifest format, written into tmp_path by the tests:
one synthetic portrait (64x64, not the contract's 128x128: the run is 4x cheaper and the code
takes any size) and two short speech-like clips (a voiced tone whose loudness
follows a syllable envelope; the envelope, sampled per video frame, is the mouth ground truth)."""
from __future__ import annotations

import json
import wave

import numpy as np
import pytest
from PIL import Image

FPS, RATE = 25, 16000


def _portrait(size: int = 64) -> np.ndarray:
    y, x = np.mgrid[:size, :size] / size
    img = np.full((size, size, 3), (60, 90, 140), np.uint8)
    face = ((x - 0.5) / 0.3) ** 2 + ((y - 0.5) / 0.4) ** 2 < 1
    img[face] = (225, 180, 150)
    for cx in (0.38, 0.62):
        img[((x - cx) / 0.05) ** 2 + ((y - 0.4) / 0.03) ** 2 < 1] = (40, 30, 30)
    img[((x - 0.5) / 0.1) ** 2 + ((y - 0.7) / 0.03) ** 2 < 1] = (150, 50, 60)
    return img


def _clip(seconds: float, syllable_hz: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    env = np.clip(np.sin(2 * np.pi * syllable_hz * t + seed), 0, None) ** 2
    voice = np.sin(2 * np.pi * 140 * t) + 0.5 * np.sin(2 * np.pi * 280 * t)
    pcm = (0.5 * env * voice).astype(np.float32)
    frames = n // (RATE // FPS)
    truth = env[: frames * (RATE // FPS)].reshape(frames, -1).mean(1)
    return pcm, truth


def _write_wav(path, pcm: np.ndarray) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes((np.clip(pcm, -1, 1) * 32767).astype("<i2").tobytes())


def write_clip_set(parent):
    """Write the set into parent/clips -> that directory (manifest.json, face.png, a.wav, b.wav)."""
    root = parent / "clips"
    root.mkdir()
    Image.fromarray(_portrait()).save(root / "face.png")
    clips = []
    for name, sec, hz, seed in (("a", 2.3, 3.0, 0), ("b", 1.7, 4.0, 1)):
        pcm, truth = _clip(sec, hz, seed)
        _write_wav(root / f"{name}.wav", pcm)
        clips.append({"name": name, "audio": f"{name}.wav", "identity": "synthetic", "mouth_open": truth.tolist()})
    manifest = {"fps": FPS, "sample_rate": RATE, "clips": clips,
                "identities": [{"name": "synthetic", "image": "face.png", "mouth_box": [0.35, 0.62, 0.65, 0.78]}]}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


@pytest.fixture
def clip_set(tmp_path):
    return write_clip_set(tmp_path)
