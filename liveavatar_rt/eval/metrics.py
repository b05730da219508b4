"""Per-frame drift metrics against the reference image, and frame-to-frame flicker.

All take uint8 frames [T, H, W, 3] (the session's output) and the reference uint8 [H, W, 3] at
the output size. They are cheap numpy reductions (a 30 s window of 128x128 frames costs well
under a second) so the evaluation's time goes to generation, not to measuring it.

- colour: CIE Lab of the frame's mean colour vs the reference's (Delta E 1976: 1 ~ just
  noticeable, > 10 an obvious cast), and the total-variation distance of the per-channel
  32-bin histograms (0 identical, 1 disjoint). Mean colour catches a global cast; the
  histogram catches contrast/saturation drift that keeps the mean.
- identity: a HOG-like descriptor (gradient-orientation histograms, 8 bins, on a 4x4 grid of
  cells of the grey image, L2-normalised) and its cosine distance to the reference's: it
  depends on where edges are and which way they run (face layout), not on colour, and is
  tolerant to small motion. Not a face-recognition embedding (none is available offline).
- flicker: mean |frame[t] - frame[t-1]| in uint8 units over the window.
"""
from __future__ import annotations

import numpy as np

_SRGB_TO_XYZ = np.array([[0.4124564, 0.3575761, 0.1804375],
                         [0.2126729, 0.7151522, 0.0721750],
                         [0.0193339, 0.1191920, 0.9503041]])
_WHITE_D65 = np.array([0.95047, 1.0, 1.08883])


def _check_frames(frames: np.ndarray, name: str = "frames") -> np.ndarray:
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        got = (getattr(frames, "dtype", type(frames)), getattr(frames, "shape", None))
        raise ValueError(f"{name} must be uint8 [T, H, W, 3], got {got}")
    return frames


def _check_pair(frames: np.ndarray, reference: np.ndarray) -> None:
    _check_frames(frames)
    if reference.dtype != np.uint8 or reference.shape != frames.shape[1:]:
        raise ValueError(f"reference must be uint8 {frames.shape[1:]} (the frame size), "
                         f"got {reference.dtype} {reference.shape}")


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB in [0, 1], [..., 3] -> CIE Lab (D65) [..., 3]."""
    lin = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = lin @ _SRGB_TO_XYZ.T / _WHITE_D65
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def colour_delta_e(frames: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """-> float [T]: Delta E 1976 between each frame's mean colour and the reference's, in Lab."""
    _check_pair(frames, reference)
    mean = frames.reshape(len(frames), -1, 3).mean(1) / 255.0
    ref = reference.reshape(-1, 3).mean(0) / 255.0
    return np.linalg.norm(rgb_to_lab(mean) - rgb_to_lab(ref)[None], axis=-1)


def _histograms(x: np.ndarray, bins: int) -> np.ndarray:
    """x: uint8 [T, N, 3] -> normalised per-channel histograms [T, 3, bins]."""
    T = x.shape[0]
    idx = (x.astype(np.int64) * bins) // 256 + np.arange(3) * bins  # channel c -> bins [c*bins, (c+1)*bins)
    flat = idx.reshape(T, -1) + (np.arange(T) * 3 * bins)[:, None]
    counts = np.bincount(flat.ravel(), minlength=T * 3 * bins).reshape(T, 3, bins)
    return counts / x.shape[1]


def colour_histogram_distance(frames: np.ndarray, reference: np.ndarray, bins: int = 32) -> np.ndarray:
    """-> float [T] in [0, 1]: total variation distance of the per-channel histograms, averaged
    over R, G, B."""
    _check_pair(frames, reference)
    h = _histograms(frames.reshape(len(frames), -1, 3), bins)
    r = _histograms(reference.reshape(1, -1, 3), bins)
    return 0.5 * np.abs(h - r).sum(-1).mean(-1)


def gradient_descriptor(frames: np.ndarray, cells: int = 4, bins: int = 8) -> np.ndarray:
    """uint8 [T, H, W, 3] -> float [T, cells * cells * bins], unit L2 norm per frame.

    Grey image -> central-difference gradients -> magnitude-weighted histograms of the
    unsigned orientation (0..pi, `bins` bins) in each of cells x cells cells."""
    _check_frames(frames)
    T, H, W, _ = frames.shape
    if H < 2 * cells or W < 2 * cells:
        raise ValueError(f"frames {H}x{W} are too small for a {cells}x{cells} cell grid")
    g = frames.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)  # [T, H, W]
    gx = np.zeros_like(g)
    gy = np.zeros_like(g)
    gx[:, :, 1:-1] = g[:, :, 2:] - g[:, :, :-2]
    gy[:, 1:-1] = g[:, 2:] - g[:, :-2]
    mag = np.hypot(gx, gy)
    ori = np.minimum((np.arctan2(gy, gx) % np.pi) / np.pi * bins, bins - 1).astype(np.int64)
    cy = np.minimum(np.arange(H) * cells // H, cells - 1)
    cx = np.minimum(np.arange(W) * cells // W, cells - 1)
    cell = (cy[:, None] * cells + cx[None, :])[None]  # [1, H, W]
    flat = (np.arange(T)[:, None, None] * cells * cells + cell) * bins + ori
    d = np.bincount(flat.ravel(), weights=mag.ravel(), minlength=T * cells * cells * bins).reshape(T, -1)
    return d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)


def identity_distance(frames: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """-> float [T] in [0, 1]: cosine distance of each frame's gradient descriptor to the reference's."""
    _check_pair(frames, reference)
    d = gradient_descriptor(frames)
    r = gradient_descriptor(reference[None])[0]
    return np.clip(1.0 - d @ r, 0.0, 1.0)


def flicker(frames: np.ndarray, previous: np.ndarray | None = None) -> np.ndarray:
    """-> float [T - 1] (or [T] given the frame before the window, uint8 [H, W, 3]):
    mean absolute difference between consecutive frames, uint8 units."""
    _check_frames(frames)
    x = frames if previous is None else np.concatenate([previous[None], frames])
    x = x.astype(np.int16)
    return np.abs(x[1:] - x[:-1]).reshape(len(x) - 1, -1).mean(1)
