"""Regenerate assets/eval/: the held-out evaluation set (committed to git, ~1.1 MB).

    .venv/bin/python -m recipes.tiny.make_eval_assets [--out assets/eval]

Four held-out identities (identity seeds HELDOUT_START + EVAL_IDENTITIES, never used for
training) as 128x128 PNG references (neutral pose, mouth closed, eyes open), four clean
espeak-ng speech clips of 6-9 s as 16 kHz mono 16-bit WAV, and manifest.json:

    {"fps": 25, "sample_rate": 16000,
     "identities": [{"name", "image", "mouth_box": [x0, y0, x1, y1]}],
     "clips": [{"name", "audio", "identity", "mouth_open": [one float per 25 fps frame]}]}

mouth_box (normalized) contains the identity's widest, most open mouth over the whole head
motion range of the generator (clips.extreme_poses), so it is valid for any generated frame.
mouth_open is the ground-truth viseme opening (visemes.mouth_track) of the clip's phonemes;
frame t covers audio samples [t * 640, (t + 1) * 640). liveavatar_rt/eval/clips.py reads this
format: keep the two in step. Deterministic (same espeak-ng and Pillow -> same bytes).
"""
from __future__ import annotations

import argparse
import json
import wave
from pathlib import Path

import numpy as np
from PIL import Image

from .audio_track import speech_track
from .clips import FPS, HELDOUT_START, NEUTRAL_MOUTH, extreme_poses, mouth_box
from .faces import FaceRenderer
from .identity import sample_identity
from .motion import NEUTRAL_POSE
from .speech import SAMPLE_RATE
from .visemes import mouth_track

ROOT = Path(__file__).resolve().parents[2]
# Offsets from HELDOUT_START, picked for variety: long hair on flat grey; dark skin, bald,
# round glasses on checks; grey long hair, glasses, earrings on dots; dark skin, curly hair,
# cap on a radial gradient.
EVAL_IDENTITIES = (1, 3, 9, 13)
CLIP_SECONDS = (8.0, 7.0, 6.0, 9.0)
CLIP_SEED0 = HELDOUT_START + 500  # speech seeds, disjoint from the training clip seeds


def write_wav(path: Path, pcm: np.ndarray, rate: int = SAMPLE_RATE) -> None:
    """float [N] in [-1, 1] -> 16-bit mono WAV."""
    q = np.round(np.clip(pcm, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(q.tobytes())


def speaking_track(seed: int, seconds: float):
    """A clean speech track with speech in it (skips the generator's silent variant)."""
    for k in range(100):
        tr = speech_track(np.random.default_rng([seed, k, 0xE7A1]), seconds)
        if tr.texts and len(tr.phonemes) > 10:
            return tr
    raise RuntimeError(f"no speaking track found for seed {seed}")


def make(out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    identities, clips = [], []
    for k, off in enumerate(EVAL_IDENTITIES):
        idn = sample_identity(HELDOUT_START + off)
        name = f"id{k}"
        img = FaceRenderer(idn, 128).frame(NEUTRAL_POSE, NEUTRAL_MOUTH, 0.0)
        Image.fromarray(img).save(out / f"{name}.png", optimize=True)
        box = mouth_box(idn, extreme_poses())
        identities.append({"name": name, "image": f"{name}.png",
                           "mouth_box": [round(float(v), 4) for v in box]})
    for k, seconds in enumerate(CLIP_SECONDS):
        n_frames = int(round(seconds * FPS))
        tr = speaking_track(CLIP_SEED0 + k, n_frames / FPS)
        mouth = mouth_track(tr.phonemes, n_frames, FPS)
        name = f"clip{k}"
        write_wav(out / f"{name}.wav", tr.clean)
        clips.append({"name": name, "audio": f"{name}.wav", "identity": identities[k]["name"],
                      "mouth_open": [round(float(v), 4) for v in mouth[:, 0]]})
    manifest = {"fps": FPS, "sample_rate": SAMPLE_RATE, "identities": identities, "clips": clips}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "assets" / "eval"))
    a = ap.parse_args(argv)
    m = make(Path(a.out))
    size = sum(p.stat().st_size for p in Path(a.out).iterdir() if p.is_file())
    print(f"wrote {len(m['identities'])} identities, {len(m['clips'])} clips to {a.out} "
          f"({size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
