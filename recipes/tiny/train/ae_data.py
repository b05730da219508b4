"""Autoencoder training and evaluation clips beyond the generated faces: photographs shipped
inside installed packages (scikit-image's and matplotlib's sample data) panned and zoomed into
clips, procedural textures, and the fixed evaluation sets.

Photographs of people are evaluation material only, never training data: `EVAL_PHOTOS` holds
them (and two other photos kept out of training); `TRAIN_PHOTOS` has no person in it.
Clips are [3, T, H, W] float in [-1, 1] (the VAE convention), made deterministically from a
numpy Generator.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image

# scikit-image 0.26 `skimage/data` files without people (gray ones are tinted at sampling).
TRAIN_PHOTOS = ("brick.png", "cell.png", "chelsea.png", "clock_motion.png", "coins.png", "color.png", "grass.png",
                "gravel.png", "hubble_deep_field.jpg", "ihc.png", "microaneurysms.png", "moon.png",
                "motorcycle_left.png", "page.png", "retina.jpg", "text.png")
# Never trained on: three photographs of people (evaluation only) and two other scenes.
EVAL_PHOTOS = ("skimage:astronaut.png", "skimage:camera.png", "matplotlib:grace_hopper.jpg",
               "skimage:coffee.png", "skimage:rocket.jpg")


def _data_dir(package: str) -> Path:
    if package == "skimage":
        import skimage

        return Path(skimage.__file__).parent / "data"
    import matplotlib

    return Path(matplotlib.get_data_path()) / "sample_data"


@lru_cache(maxsize=None)
def load_photo(name: str) -> np.ndarray:
    """'package:file' (default package skimage) -> float32 [H, W, 3] in [0, 1]."""
    package, _, file = name.rpartition(":")
    path = _data_dir(package or "skimage") / file
    if not path.exists():
        raise FileNotFoundError(f"{path} missing: the photo sets need scikit-image==0.26.0 installed in the venv")
    img = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
    return img


def _resize(img: np.ndarray, scale: float) -> np.ndarray:
    h, w = img.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray((img * 255).astype(np.uint8)).resize(size, Image.BICUBIC), np.float32) / 255.0


def pan_clip(img: np.ndarray, rng: np.random.Generator, frames: int, size: int, max_speed: float = 2.0) -> np.ndarray:
    """A camera panning over `img` (rescaled so the window covers 35-100 % of its short side)
    at up to `max_speed` px/frame, integer shifts -> float32 [T, size, size, 3]."""
    short = min(img.shape[:2])
    frac = rng.uniform(0.35, 1.0)
    img = _resize(img, size / (frac * short))
    H, W = img.shape[:2]
    H, W = max(H, size), max(W, size)
    img = np.pad(img, ((0, H - img.shape[0]), (0, W - img.shape[1]), (0, 0)), mode="reflect")
    v = rng.uniform(-max_speed, max_speed, 2)
    span = np.abs(v) * (frames - 1)
    y0 = rng.uniform(0, max(0.0, H - size - span[0])) + (span[0] if v[0] < 0 else 0)
    x0 = rng.uniform(0, max(0.0, W - size - span[1])) + (span[1] if v[1] < 0 else 0)
    out = []
    for t in range(frames):
        y = int(np.clip(round(y0 + v[0] * t), 0, H - size))
        x = int(np.clip(round(x0 + v[1] * t), 0, W - size))
        out.append(img[y:y + size, x:x + size])
    return np.stack(out)


def texture_clip(rng: np.random.Generator, frames: int, size: int) -> np.ndarray:
    """Procedural texture video -> float32 [T, size, size, 3] in [0, 1]: 1/f^beta coloured noise
    (beta 1-2.5, random colour mixing) panning, with a few sharp-edged moving shapes on top."""
    S = 2 * size
    f = np.sqrt(np.fft.fftfreq(S)[:, None] ** 2 + np.fft.fftfreq(S)[None, :] ** 2)
    f[0, 0] = 1.0
    beta = rng.uniform(1.0, 2.5)
    spec = (rng.standard_normal((3, S, S)) + 1j * rng.standard_normal((3, S, S))) / f ** beta
    noise = np.fft.ifft2(spec).real
    noise = (noise - noise.mean((1, 2), keepdims=True)) / (noise.std((1, 2), keepdims=True) + 1e-8)
    mix = rng.normal(0, 0.25, (3, 3)) + np.eye(3) * rng.uniform(0, 0.3)
    tex = np.einsum("cd,dhw->hwc", mix, noise) + rng.uniform(0.2, 0.8, 3)
    v = rng.uniform(-1.5, 1.5, 2)
    yy, xx = np.mgrid[0:size, 0:size]
    shapes = [(rng.uniform(0, size, 2), rng.uniform(-2, 2, 2), rng.uniform(4, size / 3), rng.uniform(0, 1, 3),
               rng.integers(2)) for _ in range(rng.integers(0, 5))]
    out = []
    for t in range(frames):
        y, x = int(round(size / 2 + v[0] * t)) % size, int(round(size / 2 + v[1] * t)) % size
        frame = tex[y:y + size, x:x + size].copy()
        for c, dv, r, col, kind in shapes:
            cy, cx = c + dv * t
            m = ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r) if kind else ((abs(yy - cy) < r) & (abs(xx - cx) < r / 2))
            frame[m] = col
        out.append(frame)
    return np.clip(np.stack(out), 0, 1).astype(np.float32)


def to_clip(frames: np.ndarray) -> torch.Tensor:
    """float [T, H, W, 3] in [0, 1] or uint8 -> [3, T, H, W] float in [-1, 1]."""
    a = frames.astype(np.float32) / 255.0 if frames.dtype == np.uint8 else frames
    return torch.from_numpy(np.ascontiguousarray(a)).permute(3, 0, 1, 2) * 2 - 1


def tint(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Grey scans are common in scikit-image's data: give grey photos a random duotone."""
    if np.abs(img - img.mean(2, keepdims=True)).max() > 0.02:
        return img
    lo, hi = rng.uniform(0, 0.4, 3), rng.uniform(0.6, 1.0, 3)
    return lo + img * (hi - lo)


@lru_cache(maxsize=4)
def heldout_face_clips(n: int = 6, frames: int = 17, size: int = 128) -> tuple[torch.Tensor, ...]:
    """Generated talking faces of held-out identities (seeds HELDOUT_START + 500 + i), the
    procedural evaluation set."""
    from recipes.tiny.clips import HELDOUT_START, make_clip

    return tuple(to_clip(make_clip(HELDOUT_START + 500 + i, size=size, seconds=(frames + 1) / 25).frames[:frames])
                 for i in range(n))


@lru_cache(maxsize=4)
def eval_photo_clips(frames: int = 17, size: int = 128) -> tuple[torch.Tensor, ...]:
    """Each `EVAL_PHOTOS` photo as a slow pan (fixed seed per photo)."""
    return tuple(to_clip(pan_clip(load_photo(name), np.random.default_rng(100 + i), frames, size, max_speed=1.0))
                 for i, name in enumerate(EVAL_PHOTOS))
