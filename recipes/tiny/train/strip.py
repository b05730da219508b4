"""A frame strip of the bundled model speaking the example clip, for the README.

    python -m recipes.tiny.train.strip [--out assets/example/strip.png] [--every 6] [--count 10]

The portrait, then every `every`-th generated frame (25 fps: every 6th = 4 per second).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from liveavatar_rt.engine import Pipeline
from liveavatar_rt.io.audio_file import read_audio
from liveavatar_rt.io.image import load_image

ROOT = Path(__file__).resolve().parents[3]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--image", default=str(ROOT / "assets/example/portrait.png"))
    ap.add_argument("--audio", default=str(ROOT / "assets/example/speech.wav"))
    ap.add_argument("--out", default=str(ROOT / "assets/example/strip.png"))
    ap.add_argument("--every", type=int, default=6)
    ap.add_argument("--count", type=int, default=10)
    args = ap.parse_args(argv)

    pipe = Pipeline.from_pretrained("tiny")
    pcm, rate = read_audio(args.audio)
    video = pipe.generate(args.image, pcm, rate)
    frames = video.frames[:: args.every][: args.count]
    ref = np.asarray(Image.fromarray(load_image(args.image)).resize(frames.shape[2:0:-1]))
    strip = np.concatenate([ref, *frames], axis=1)
    Image.fromarray(strip).save(args.out)
    print(f"strip: portrait + {len(frames)} frames (every {args.every}) -> {args.out}")


if __name__ == "__main__":
    main()
