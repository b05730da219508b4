"""Random cartoon identities: everything about a face that stays fixed over a clip.

    sample_identity(seed) -> Identity     (deterministic: same seed -> same identity)

Geometry is in units of the image size (0..1, origin top-left), so one identity renders at any
resolution. The mouth is kept large (MOUTH_HALF_WIDTH >= 0.125 of the image: >= ~28 px wide at
128 px for a neutral mouth) so it survives an 8x VAE downsampling. Colours are RGB tuples.
Mouth interior colours are kept much darker than any skin tone (luma < 0.4x the darkest skin),
the property the pixel lip-sync metric (liveavatar_rt.eval.lipsync) relies on.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HAIR_STYLES = ("short", "long", "bald", "bob", "bun", "curly", "spiky", "side")
BACKGROUNDS = ("flat", "gradient", "stripes", "dots", "checker", "radial")
HATS = (None, "cap", "beanie", "brim")
GLASSES = (None, "round", "square")

# Skin tone ramp, light to dark (a random point between two neighbours is chosen).
_SKIN = np.array([(255, 228, 206), (241, 204, 172), (226, 178, 140), (200, 140, 100),
                  (168, 112, 76), (128, 84, 56), (96, 62, 44)], np.float64)
_HAIR = np.array([(24, 18, 16), (58, 38, 26), (104, 68, 40), (150, 84, 44), (214, 178, 112),
                  (168, 168, 170), (232, 230, 222), (40, 60, 140), (190, 70, 140),
                  (60, 130, 90)], np.float64)
_HAIR_P = np.array([22, 20, 14, 8, 12, 6, 4, 5, 5, 4], np.float64)
_EYES = np.array([(70, 45, 25), (110, 75, 40), (60, 110, 160), (80, 125, 80), (120, 120, 130),
                  (40, 30, 25)], np.float64)

Color = tuple[int, int, int]


@dataclass(frozen=True)
class Identity:
    seed: int
    # face geometry (units of image size)
    cx: float
    cy: float
    face_rx: float
    face_ry: float
    jaw: float            # 0 = pointed chin, 1 = square jaw
    eye_y: float
    eye_dx: float         # half distance between the eye centres
    eye_rx: float
    eye_ry: float
    iris_r: float         # fraction of eye_ry
    brow_thick: float
    brow_raise: float
    brow_tilt: float
    nose_len: float
    nose_style: int       # 0 line, 1 button, 2 nostrils-only
    mouth_y: float
    mouth_hw: float       # neutral half-width of the mouth
    mouth_max_h: float    # inner height at open = 1
    lip_thick: float
    ear_size: float
    # colours
    skin: Color
    skin_shade: Color
    hair: Color
    hair_style: str
    hairline: float       # how low the fringe comes, 0..1
    eye_color: Color
    brow_color: Color
    lip: Color
    interior: Color
    teeth: Color
    shirt: Color
    shirt2: Color
    background: str
    bg_a: Color
    bg_b: Color
    glasses: str | None
    glasses_color: Color
    earrings: bool
    earring_color: Color
    hat: str | None
    hat_color: Color


def _c(v) -> Color:
    return tuple(int(round(float(x))) for x in np.clip(v, 0, 255))


def _mix(a, b, t) -> np.ndarray:
    return np.asarray(a, np.float64) * (1 - t) + np.asarray(b, np.float64) * t


def luma(c) -> float:
    return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]


def _pick_color(rng) -> np.ndarray:
    return rng.uniform(20, 235, 3)


def sample_identity(seed: int) -> Identity:
    """Identity for a non-negative integer seed."""
    if int(seed) != seed or seed < 0:
        raise ValueError(f"identity seed must be a non-negative integer, got {seed!r}")
    rng = np.random.default_rng([int(seed), 0x1D])
    i = rng.uniform(0, len(_SKIN) - 1)
    skin = _mix(_SKIN[int(i)], _SKIN[min(int(i) + 1, len(_SKIN) - 1)], i - int(i))
    skin = skin * rng.uniform(0.96, 1.04, 3)  # small hue jitter
    shade = skin * rng.uniform(0.8, 0.88)
    hair = _HAIR[rng.choice(len(_HAIR), p=_HAIR_P / _HAIR_P.sum())] * rng.uniform(0.85, 1.15)
    face_rx = rng.uniform(0.27, 0.33)
    face_ry = face_rx * rng.uniform(1.15, 1.35)
    cy = rng.uniform(0.43, 0.47)
    eye_y = cy - face_ry * rng.uniform(0.02, 0.14)
    lip = _mix(skin, (170, 40, 60), rng.uniform(0.3, 0.6)) * rng.uniform(0.8, 0.95)
    interior = np.array([rng.uniform(40, 70), rng.uniform(8, 20), rng.uniform(12, 26)])
    # keep the interior dark against this skin (see module doc)
    interior *= min(1.0, 0.38 * luma(_SKIN[-1]) / luma(interior))
    bg_a, bg_b = _pick_color(rng), _pick_color(rng)
    shirt = _pick_color(rng)
    return Identity(
        seed=int(seed), cx=float(rng.uniform(0.48, 0.52)), cy=float(cy), face_rx=float(face_rx),
        face_ry=float(face_ry), jaw=float(rng.uniform(0, 1)), eye_y=float(eye_y),
        eye_dx=float(face_rx * rng.uniform(0.38, 0.48)), eye_rx=float(rng.uniform(0.042, 0.058)),
        eye_ry=float(rng.uniform(0.022, 0.034)), iris_r=float(rng.uniform(0.7, 0.95)),
        brow_thick=float(rng.uniform(0.008, 0.018)), brow_raise=float(rng.uniform(0.035, 0.055)),
        brow_tilt=float(rng.uniform(-0.012, 0.012)), nose_len=float(rng.uniform(0.06, 0.1)),
        nose_style=int(rng.integers(0, 3)), mouth_y=float(cy + face_ry * rng.uniform(0.5, 0.56)),
        mouth_hw=float(rng.uniform(0.125, 0.145)), mouth_max_h=float(rng.uniform(0.1, 0.125)),
        lip_thick=float(rng.uniform(0.012, 0.02)), ear_size=float(rng.uniform(0.045, 0.065)),
        skin=_c(skin), skin_shade=_c(shade), hair=_c(hair),
        hair_style=str(rng.choice(HAIR_STYLES)), hairline=float(rng.uniform(0, 1)),
        eye_color=_c(_EYES[rng.integers(len(_EYES))] * rng.uniform(0.85, 1.15)),
        brow_color=_c(_mix(hair, (20, 15, 10), rng.uniform(0.2, 0.6))), lip=_c(lip),
        interior=_c(interior), teeth=_c(rng.uniform(225, 250) * np.array([1, 0.98, 0.92])),
        shirt=_c(shirt), shirt2=_c(shirt * rng.uniform(0.6, 0.85)),
        background=str(rng.choice(BACKGROUNDS)), bg_a=_c(bg_a), bg_b=_c(bg_b),
        glasses=GLASSES[rng.choice(3, p=[0.7, 0.15, 0.15])],
        glasses_color=_c(rng.uniform(10, 200, 3)), earrings=bool(rng.random() < 0.25),
        earring_color=_c(rng.choice([(230, 190, 60), (200, 200, 210), (200, 40, 60)])),
        hat=HATS[rng.choice(4, p=[0.7, 0.1, 0.1, 0.1])], hat_color=_c(_pick_color(rng)))
