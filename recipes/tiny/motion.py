"""Smooth head motion and blinks, sampled per video frame.

Head pose per frame (float32 [T, 5] columns POSE_FIELDS):
    dx, dy  translation, fraction of the image size (|.| <= MAX_SHIFT)
    roll    in-plane rotation, degrees (|.| <= MAX_ROLL)
    scale   relative size (1 +- MAX_SCALE)
    yaw     left/right turn in [-1, 1]; the 2D renderer shifts the inner features sideways
Each channel is low-pass filtered Gaussian noise (a sum of a few random slow sinusoids plus a
faster small jitter), so motion is smooth with occasional larger drifts, like an idle speaker.
Speech energy adds small nods (people move their head more while talking).

Blinks: a renewal process with 2-6 s gaps; each blink closes in ~80 ms and reopens in ~120 ms.
Output: float32 [T] in [0, 1] (1 = eyes fully shut).
"""
from __future__ import annotations

import numpy as np

POSE_FIELDS = ("dx", "dy", "roll", "scale", "yaw")
MAX_SHIFT, MAX_ROLL, MAX_SCALE, MAX_YAW = 0.03, 5.0, 0.03, 0.6
NEUTRAL_POSE = np.array([0.0, 0.0, 0.0, 1.0, 0.0], np.float32)


def _smooth_noise(rng: np.random.Generator, n: int, fps: float, n_waves: int = 3,
                  slowest: float = 0.1, fastest: float = 0.6) -> np.ndarray:
    """Sum of random slow sinusoids, normalised to a peak amplitude of ~1. -> float64 [n]."""
    t = np.arange(n) / fps
    out = np.zeros(n)
    for _ in range(n_waves):
        f = rng.uniform(slowest, fastest)
        out += rng.uniform(0.3, 1.0) * np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi))
    return out / n_waves * 1.6


def head_motion(rng: np.random.Generator, n_frames: int, fps: float = 25.0,
                energy: np.ndarray | None = None, amount: float = 1.0) -> np.ndarray:
    """-> float32 [n_frames, 5] (dx, dy, roll, scale, yaw). energy: optional [n_frames] speech
    envelope in [0, 1] driving small nods; amount in [0, 1] scales the whole motion."""
    if n_frames <= 0:
        raise ValueError(f"head_motion: n_frames must be positive, got {n_frames}")
    pose = np.empty((n_frames, 5))
    pose[:, 0] = MAX_SHIFT * 0.7 * _smooth_noise(rng, n_frames, fps)
    pose[:, 1] = MAX_SHIFT * 0.5 * _smooth_noise(rng, n_frames, fps)
    pose[:, 2] = MAX_ROLL * 0.7 * _smooth_noise(rng, n_frames, fps)
    pose[:, 3] = MAX_SCALE * 0.5 * _smooth_noise(rng, n_frames, fps, slowest=0.05, fastest=0.2)
    pose[:, 4] = MAX_YAW * 0.7 * _smooth_noise(rng, n_frames, fps)
    if energy is not None:
        e = np.asarray(energy, np.float64)
        if e.shape != (n_frames,):
            raise ValueError(f"head_motion: energy must have shape ({n_frames},), got {e.shape}")
        k = np.ones(5) / 5  # ~200 ms smoothing: nods follow phrases, not phonemes
        nod = np.convolve(np.clip(e, 0, 1), k, "same")
        pose[:, 1] += MAX_SHIFT * 0.4 * nod
        pose[:, 2] += MAX_ROLL * 0.2 * nod * rng.choice([-1.0, 1.0])
    pose *= amount
    lim = np.array([MAX_SHIFT, MAX_SHIFT, MAX_ROLL, MAX_SCALE, MAX_YAW])
    pose = np.clip(pose, -lim, lim)
    pose[:, 3] += 1.0
    return pose.astype(np.float32)


def blinks(rng: np.random.Generator, n_frames: int, fps: float = 25.0,
           min_gap: float = 2.0, max_gap: float = 6.0) -> np.ndarray:
    """-> float32 [n_frames] eye closure in [0, 1]."""
    if n_frames <= 0:
        raise ValueError(f"blinks: n_frames must be positive, got {n_frames}")
    t = np.arange(n_frames) / fps
    out = np.zeros(n_frames)
    start = rng.uniform(0.2, max_gap)  # first blink anywhere, so clips do not all blink at 2 s
    while start < t[-1] + 0.3:
        close, reopen = rng.uniform(0.06, 0.1), rng.uniform(0.1, 0.16)
        rise = np.clip((t - start) / close, 0, 1)
        fall = np.clip(1 - (t - start - close) / reopen, 0, 1)
        out = np.maximum(out, np.where(t < start + close, rise, fall) * (t >= start))
        start += close + reopen + rng.uniform(min_gap, max_gap)
    return out.astype(np.float32)
