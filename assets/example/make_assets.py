"""Regenerate the bundled example inputs: portrait.png and speech.wav.

    .venv/bin/python assets/example/make_assets.py            # both
    .venv/bin/python assets/example/make_assets.py --portrait # only the image

portrait.png: a 512x512 cartoon head-and-shoulders portrait drawn with Pillow primitives
(drawn at 2x, downsampled with LANCZOS for smooth edges). Fully deterministic.

speech.wav: espeak-ng (voice en-us, 150 words/min) renders TEXT at its native 22050 Hz;
libswresample (through PyAV) converts it to mono 16 kHz int16. Needs the `espeak-ng` binary
(Debian: apt-get install espeak-ng); output is deterministic for a given espeak-ng version.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

HERE = Path(__file__).resolve().parent
TEXT = "Hello, I am a live avatar. I speak for as long as the audio lasts."
SIZE = 512
SS = 2  # supersampling factor for anti-aliased shapes

SKIN, SKIN_SHADE = (236, 192, 160), (214, 163, 130)
HAIR, HAIR_LIGHT = (66, 40, 28), (96, 62, 42)
SHIRT, SHIRT_SHADE = (52, 96, 150), (40, 76, 122)
LIPS, IRIS = (186, 84, 92), (84, 120, 70)


def _s(*v):
    """Scale 512-px design coordinates to the supersampled canvas."""
    return [int(round(x * SS)) for x in v]


def draw_portrait() -> Image.Image:
    n = SIZE * SS
    # Background: soft vertical gradient, plus a faint vignette.
    y = np.linspace(0.0, 1.0, n)[:, None, None]
    top, bottom = np.array([200, 214, 228]), np.array([150, 166, 188])
    bg = (top * (1 - y) + bottom * y) * np.ones((1, n, 1))
    img = Image.fromarray(bg.astype(np.uint8), "RGB")
    d = ImageDraw.Draw(img)

    # Shoulders and torso, neck (drawn before the head so the chin overlaps the neck).
    d.rounded_rectangle(_s(40, 396, 472, 640), radius=110 * SS, fill=SHIRT)
    d.line(_s(150, 470, 150, 512), fill=SHIRT_SHADE, width=5 * SS)  # sleeve seams
    d.line(_s(362, 470, 362, 512), fill=SHIRT_SHADE, width=5 * SS)
    d.rectangle(_s(216, 318, 296, 410), fill=SKIN_SHADE)
    d.polygon(_s(206, 398, 256, 452, 306, 398), fill=SKIN_SHADE)  # V-neck
    d.line(_s(206, 398, 256, 452, 306, 398), fill=(235, 235, 240), width=6 * SS)  # collar

    # Hair behind the head.
    d.ellipse(_s(136, 70, 376, 330), fill=HAIR)
    d.rounded_rectangle(_s(140, 170, 372, 338), radius=28 * SS, fill=HAIR)

    # Ears, then the face.
    for x0 in (146, 342):
        d.ellipse(_s(x0, 196, x0 + 26, 256), fill=SKIN_SHADE)
    d.ellipse(_s(160, 100, 352, 352), fill=SKIN)

    # Fringe: a few overlapping lobes across the forehead.
    d.chord(_s(150, 78, 362, 230), 180, 360, fill=HAIR)
    for cx, w in ((196, 70), (250, 80), (310, 70)):
        d.ellipse(_s(cx - w // 2, 120, cx + w // 2, 176), fill=HAIR)
    d.arc(_s(180, 90, 330, 200), 200, 300, fill=HAIR_LIGHT, width=5 * SS)

    # Eyebrows.
    d.line(_s(194, 190, 214, 182, 238, 186), fill=HAIR, width=7 * SS, joint="curve")
    d.line(_s(274, 186, 298, 182, 318, 190), fill=HAIR, width=7 * SS, joint="curve")

    # Eyes: white, iris, pupil, highlight, upper lid line.
    for cx in (216, 296):
        d.ellipse(_s(cx - 24, 200, cx + 24, 226), fill=(250, 250, 250))
        d.ellipse(_s(cx - 11, 202, cx + 11, 224), fill=IRIS)
        d.ellipse(_s(cx - 5, 208, cx + 5, 218), fill=(20, 20, 20))
        d.ellipse(_s(cx + 2, 206, cx + 6, 210), fill=(255, 255, 255))
        d.arc(_s(cx - 25, 198, cx + 25, 230), 190, 350, fill=(60, 40, 35), width=3 * SS)

    # Nose: side shadow line and nostrils.
    d.line(_s(258, 220, 250, 270, 262, 276), fill=SKIN_SHADE, width=4 * SS, joint="curve")
    d.ellipse(_s(238, 270, 248, 278), fill=(196, 140, 110))
    d.ellipse(_s(264, 270, 274, 278), fill=(196, 140, 110))

    # Mouth: lips as two chords, a dark line between them.
    d.chord(_s(230, 296, 282, 314), 180, 360, fill=LIPS)
    d.chord(_s(233, 298, 279, 324), 0, 180, fill=LIPS)
    d.line(_s(231, 305, 256, 309, 281, 305), fill=(120, 50, 60), width=3 * SS, joint="curve")

    img = img.resize((SIZE, SIZE), Image.Resampling.LANCZOS)

    # Cheek blush: a blurred translucent overlay (done at the final size to keep it soft).
    blush = Image.new("L", img.size, 0)
    bd = ImageDraw.Draw(blush)
    for cx in (200, 312):
        bd.ellipse((cx - 22, 250, cx + 22, 276), fill=70)
    blush = blush.filter(ImageFilter.GaussianBlur(8))
    img = Image.composite(Image.new("RGB", img.size, (232, 120, 120)), img, blush)
    return img


def make_speech(out: Path) -> None:
    import av  # only needed here; keeps --portrait usable without PyAV

    exe = shutil.which("espeak-ng")
    if exe is None:
        raise SystemExit("espeak-ng not found (Debian/Ubuntu: apt-get install espeak-ng)")
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.wav"
        subprocess.run([exe, "-v", "en-us", "-s", "150", "-w", str(raw), TEXT], check=True)
        resampler = av.AudioResampler(format="s16", layout="mono", rate=16000)
        chunks = []
        with av.open(str(raw)) as c:
            for frame in c.decode(audio=0):
                chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
        chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    pcm = np.concatenate(chunks).astype("<i2")
    with wave.open(str(out), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(pcm.tobytes())
    print(f"wrote {out} ({pcm.size / 16000:.2f} s)")


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
