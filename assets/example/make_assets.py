"""Regenerate the bundled example inputs: portrait.png and speech.wav.

    .venv/bin/python assets/example/make_assets.py            # both
    .venv/bin/python assets/example/make_assets.py --portrait # only the image

Both come from the tiny-model data generator (recipes/tiny), so the demo input is
in-distribution for a model trained on that data:

portrait.png: held-out identity HELDOUT_START + 7 (identity seeds >= HELDOUT_START are never
used for training) rendered by recipes.tiny.faces at 512x512: neutral frontal pose, mouth
closed, eyes open. Fully deterministic.

speech.wav: TEXT spoken by libespeak-ng (voice en-us, 150 words/min) through
recipes.tiny.speech (phoneme-timed synthesis at 22050 Hz, band-limited resampling to 16 kHz),
written as mono 16-bit PCM. Needs libespeak-ng (Debian: apt-get install espeak-ng);
deterministic for a given espeak-ng version.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # the repo root, for `recipes`

from recipes.tiny.clips import HELDOUT_START, NEUTRAL_MOUTH  # noqa: E402
from recipes.tiny.faces import FaceRenderer  # noqa: E402
from recipes.tiny.identity import sample_identity  # noqa: E402
from recipes.tiny.make_eval_assets import write_wav  # noqa: E402
from recipes.tiny.motion import NEUTRAL_POSE  # noqa: E402
from recipes.tiny.speech import Voice, synthesize  # noqa: E402

TEXT = "Hello, I am a live avatar. I speak for as long as the audio lasts."
SIZE = 512
IDENTITY = HELDOUT_START + 7


def draw_portrait() -> Image.Image:
    idn = sample_identity(IDENTITY)
    return Image.fromarray(FaceRenderer(idn, SIZE).frame(NEUTRAL_POSE, NEUTRAL_MOUTH, 0.0))


def make_speech(out: Path) -> None:
    sp = synthesize(TEXT, Voice("en-us", rate=150))
    write_wav(out, sp.pcm)
    print(f"wrote {out} ({sp.seconds:.2f} s, {len(sp.phonemes)} phonemes)")


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
        make_speech(HERE / "speech.wav")


if __name__ == "__main__":
    main()
