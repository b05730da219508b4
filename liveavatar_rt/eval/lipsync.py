"""Lip-sync from pixels: how open the mouth is, and how well that follows a ground truth.

    mouth_opening(frames uint8 [T, H, W, 3], box (x0, y0, x1, y1) normalized) -> float64 [T]
    lipsync_correlation(measured [T], truth [T], max_lag=2) -> (r, lag)

Opening: inside the box, a pixel counts as mouth interior by how much darker it is than the
box's skin level (the 75th percentile of luma in the box, so lips, teeth and the interior do
not move the reference as long as they cover less than a quarter of the box). Darkness is soft:
0 at >= 0.55x the skin luma, 1 at <= 0.3x, linear between (anti-aliased edges count partly).
Dark runs that touch the box's top or bottom edge are dropped (outside the face: see
the code). Per column, the dark height is summed; the opening is the mean over the darkest
30% of columns, divided by the box height. It is a height, not an area, so lip rounding or
spreading (mouth width) barely changes it, and a ratio to the skin level, so it holds for
light and dark skin alike.
Needs: the box covers the mouth over the whole sequence and mostly face skin around it.

Correlation: Pearson r between measured[t + lag] and truth[t] for lag in [-max_lag, max_lag]
(positive lag: the video is late), over the overlapping frames; the best r and its lag are
returned. r is NaN when either series is constant on the overlap (e.g. a silent window).
"""
from __future__ import annotations

import math

import numpy as np

SKIN_PERCENTILE = 75.0
DARK_HI, DARK_LO = 0.55, 0.30  # fraction of skin luma: not dark above HI, fully dark below LO
TOP_COLUMNS = 0.3


def _box_pixels(box, h: int, w: int) -> tuple[int, int, int, int]:
    try:
        x0, y0, x1, y1 = (float(v) for v in box)
    except (TypeError, ValueError) as e:
        raise ValueError(f"box must be 4 numbers (x0, y0, x1, y1), got {box!r}") from e
    if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
        raise ValueError(f"box {box!r} is not normalized (0 <= x0 < x1 <= 1, 0 <= y0 < y1 <= 1)")
    c0, c1 = int(math.floor(x0 * w)), int(math.ceil(x1 * w))
    r0, r1 = int(math.floor(y0 * h)), int(math.ceil(y1 * h))
    if c1 - c0 < 2 or r1 - r0 < 2:
        raise ValueError(f"box {box!r} covers less than 2x2 pixels of a {h}x{w} frame")
    return r0, r1, c0, c1


def mouth_opening(frames, box) -> np.ndarray:
    """frames: uint8 [T, H, W, 3] (or one [H, W, 3]); box: normalized (x0, y0, x1, y1).
    -> float64 [T], 0 = closed, ~0.5 = the dark interior spans half the box height."""
    f = np.asarray(frames)
    if f.ndim == 3:
        f = f[None]
    if f.ndim != 4 or f.shape[-1] != 3:
        raise ValueError(f"frames must be [T, H, W, 3] RGB, got shape {f.shape}")
    if f.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {f.dtype}")
    r0, r1, c0, c1 = _box_pixels(box, f.shape[1], f.shape[2])
    crop = f[:, r0:r1, c0:c1].astype(np.float32)
    y = crop @ np.array([0.299, 0.587, 0.114], np.float32)  # [T, h, w]
    skin = np.percentile(y.reshape(len(y), -1), SKIN_PERCENTILE, axis=1)[:, None, None]
    skin = np.maximum(skin, 1.0)
    dark = np.clip((DARK_HI * skin - y) / ((DARK_HI - DARK_LO) * skin), 0.0, 1.0)
    # Dark runs touching the box's top or bottom edge in their column are outside the face
    # (hair, background or the neck shadow showing in the box corners past the jaw line): the
    # mouth interior is enclosed by lips and never reaches the edge of a box that contains it.
    b = dark > 0
    edge = np.cumprod(b, axis=1, dtype=np.uint8) | np.cumprod(b[:, ::-1], axis=1,
                                                               dtype=np.uint8)[:, ::-1]
    dark[edge.astype(bool)] = 0.0
    heights = dark.sum(axis=1) / y.shape[1]  # [T, w]
    k = max(1, int(round(TOP_COLUMNS * heights.shape[1])))
    top = np.sort(heights, axis=1)[:, -k:]
    return top.mean(axis=1).astype(np.float64)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    den = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b) / den if den > 1e-12 else float("nan")


def lipsync_correlation(measured, truth, max_lag: int = 2) -> tuple[float, int]:
    """Best Pearson r of measured vs truth over lags in [-max_lag, max_lag]. -> (r, lag);
    (nan, 0) when no lag gives a defined r."""
    m = np.asarray(measured, np.float64).ravel()
    t = np.asarray(truth, np.float64).ravel()
    if len(m) != len(t):
        raise ValueError(f"measured has {len(m)} frames, truth has {len(t)}")
    if max_lag < 0 or int(max_lag) != max_lag:
        raise ValueError(f"max_lag must be a non-negative integer, got {max_lag!r}")
    best, best_lag = float("nan"), 0
    for lag in range(-int(max_lag), int(max_lag) + 1):
        if lag >= 0:
            a, b = m[lag:], t[: len(t) - lag]
        else:
            a, b = m[: len(m) + lag], t[-lag:]
        if len(a) < 3:
            continue
        r = _pearson(a, b)
        if not math.isnan(r) and (math.isnan(best) or r > best):
            best, best_lag = r, lag
    return best, best_lag
