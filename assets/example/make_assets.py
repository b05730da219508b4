"""Regenerate the bundled example inputs: portrait.png and speech.wav.

    .venv/bin/python assets/example/make_assets.py            # both
    .venv/bin/python assets/example/make_assets.py --portrait # only the image
    .venv/bin/python assets/example/make_assets.py --speech   # speech.wav + manifest.json

Both come from the tiny-model data generator (recipes/tiny), so the demo input is
in-distribution for a model trained on that data:

portrait.png: held-out identity HELDOUT_START + 7 (identity seeds >= HELDOUT_START are never
used for training) rendered by recipes.tiny.faces at 512x512: neutral frontal pose, mouth
closed, eyes open. Fully deterministic.

speech.wav: TEXT spoken by libespeak-ng (voice en-us, 150 words/min) through
recipes.tiny.speech (phoneme-timed synthesis at 22050 Hz, band-limited resampling to 16 kHz),
written as mono 16-bit PCM. Needs libespeak-ng (Debian: apt-get install espeak-ng);
deterministic for a given espeak-ng version.

manifest.json: the ground truth for scoring `make demo`'s lip sync, a clip set in the format
of assets/eval/manifest.json (so `liveavatar-rt eval --clips assets/example` scores it): the
portrait's normalized mouth box (valid over the generator's whole motion range) and the
per-frame (25 fps) viseme opening of speech.wav's phonemes.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # the repo root, for `recipes`

from recipes.tiny.clips import FPS, HELDOUT_START, NEUTRAL_MOUTH, extreme_poses, mouth_box  # noqa: E402
from recipes.tiny.faces import FaceRenderer  # noqa: E402
from recipes.tiny.identity import sample_identity  # noqa: E402
from recipes.tiny.make_eval_assets import write_wav  # noqa: E402
from recipes.tiny.motion import NEUTRAL_POSE  # noqa: E402
from recipes.tiny.speech import SAMPLE_RATE, Voice, synthesize  # noqa: E402
from recipes.tiny.visemes import mouth_track  # noqa: E402

TEXT = "Hello, I am a live avatar. I speak for as long as the audio lasts."
SIZE = 512
IDENTITY = HELDOUT_START + 7


def draw_portrait() -> Image.Image:
    idn = sample_identity(IDENTITY)
    return Image.fromarray(FaceRenderer(idn, SIZE).frame(NEUTRAL_POSE, NEUTRAL_MOUTH, 0.0))


def make_speech(out: Path, truth: Path) -> None:
    sp = synthesize(TEXT, Voice("en-us", rate=150))
    write_wav(out, sp.pcm)
    print(f"wrote {out} ({sp.seconds:.2f} s, {len(sp.phonemes)} phonemes)")
    n_frames = int(round(sp.seconds * FPS))
    box = mouth_box(sample_identity(IDENTITY), extreme_poses())
    opening = mouth_track(sp.phonemes, n_frames, FPS)[:, 0]
    manifest = {"fps": FPS, "sample_rate": SAMPLE_RATE,
                "identities": [{"name": "example", "image": "portrait.png",
                                "mouth_box": [round(float(v), 4) for v in box]}],
                "clips": [{"name": "speech", "audio": out.name, "identity": "example",
                           "mouth_open": [round(float(v), 4) for v in opening]}]}
    truth.write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"wrote {truth} ({n_frames} frames of ground-truth mouth opening)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--portrait", action="store_true", help="only the image")
    ap.add_argument("--speech", action="store_true", help="only the audio")
    args = ap.parse_args()
    both = not (args.portrait or args.speech)
    if both or args.portrait:
        out = HERE / "portrait.png"
        draw_portrait().save(out, optimize=True)
        print(f"wrote {out} ({out.stat().st_size // 1024} KB)")
    if both or args.speech:
        make_speech(HERE / "speech.wav", HERE / "manifest.json")


if __name__ == "__main__":
    main()
