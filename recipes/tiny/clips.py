"""One training clip: a talking face with its speech, aligned frame by frame.

    make_clip(seed, size=128, seconds=4.0) -> Clip

Alignment: FPS = 25 and SAMPLE_RATE = 16000, so frame t covers audio samples
[t * 640, (t + 1) * 640) and its ground-truth mouth is the mean viseme shape over that same span.
T = round(seconds * 25), N = T * 640.

Seeds: the clip seed drives the speech, motion and blinks; the identity seed (default: the clip
seed) drives the face. Identity seeds >= HELDOUT_START are held out for evaluation
(assets/eval and any held-out test set); the training generator refuses them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .audio_track import speech_track
from .faces import FaceRenderer, mouth_geometry, pose_matrix
from .identity import Identity, sample_identity
from .motion import MAX_ROLL, MAX_SCALE, MAX_SHIFT, MAX_YAW, NEUTRAL_POSE, blinks, head_motion
from .speech import SAMPLE_RATE
from .visemes import mouth_track

FPS = 25
HOP = SAMPLE_RATE // FPS  # 640 audio samples per frame
HELDOUT_START = 1_000_000
NEUTRAL_MOUTH = (0.0, 0.5)


@dataclass
class Clip:
    frames: np.ndarray      # uint8 [T, H, W, 3]
    audio: np.ndarray       # float32 [T * 640] at 16 kHz (noisy: the model input)
    mouth: np.ndarray       # float32 [T, 2] ground truth (open, width) in [0, 1]
    reference: np.ndarray   # uint8 [H, W, 3] neutral frontal pose, mouth closed, eyes open
    mouth_box: np.ndarray   # float32 [4] normalized (x0, y0, x1, y1) covering the mouth
    pose: np.ndarray        # float32 [T, 5] (dx, dy, roll, scale, yaw)
    blink: np.ndarray       # float32 [T] eye closure
    meta: dict = field(default_factory=dict)


def mouth_box(idn: Identity, poses, shift_scale: float = 0.035, margin: float = 0.01):
    """Normalized (x0, y0, x1, y1) containing the widest/most open mouth of `idn` under every
    pose in poses [K, 5] (the same geometry the renderer uses). -> float32 [4]."""
    (x0, y0, x1, y1), _ = mouth_geometry(idn, 1.0, 1.0)
    pts = []
    for p in np.asarray(poses, np.float64).reshape(-1, 5):
        sh = p[4] * shift_scale
        corners = np.array([[x0 + sh, y0, 1], [x1 + sh, y0, 1], [x0 + sh, y1, 1], [x1 + sh, y1, 1]])
        pts.append(corners @ pose_matrix(idn, p).T)
    pts = np.concatenate(pts)
    lo, hi = pts.min(0) - margin, pts.max(0) + margin
    return np.clip(np.array([lo[0], lo[1], hi[0], hi[1]]), 0, 1).astype(np.float32)


def extreme_poses() -> np.ndarray:
    """Corners of the motion range (plus neutral): a mouth box valid for any generated motion."""
    out = [NEUTRAL_POSE]
    for dx in (-MAX_SHIFT, MAX_SHIFT):
        for dy in (-MAX_SHIFT, MAX_SHIFT):
            for roll in (-MAX_ROLL, MAX_ROLL):
                for yaw in (-MAX_YAW, MAX_YAW):
                    out.append([dx, dy, roll, 1 + MAX_SCALE, yaw])
    return np.array(out, np.float32)


def frame_rms(x: np.ndarray, n_frames: int) -> np.ndarray:
    """RMS per frame window of 640 samples. x: [n_frames * 640] -> float64 [n_frames]."""
    return np.sqrt(np.mean(x[: n_frames * HOP].astype(np.float64).reshape(n_frames, HOP) ** 2, 1))


def make_clip(seed: int, size: int = 128, seconds: float = 4.0,
              identity_seed: int | None = None) -> Clip:
    if int(seed) != seed or seed < 0:
        raise ValueError(f"clip seed must be a non-negative integer, got {seed!r}")
    n_frames = int(round(seconds * FPS))
    if n_frames < 5:
        raise ValueError(f"seconds must cover at least 5 frames (0.2 s), got {seconds}")
    idn = sample_identity(seed if identity_seed is None else identity_seed)
    rng = np.random.default_rng([int(seed), 0xC11])
    track = speech_track(rng, n_frames / FPS)
    mouth = mouth_track(track.phonemes, n_frames, FPS)
    env = frame_rms(track.clean, n_frames)
    env = env / (env.max() + 1e-9)
    pose = head_motion(rng, n_frames, FPS, energy=env, amount=float(rng.uniform(0.3, 1.0)))
    blink = blinks(rng, n_frames, FPS)
    r = FaceRenderer(idn, size)
    frames = np.stack([r.frame(pose[t], mouth[t], blink[t]) for t in range(n_frames)])
    ref = r.frame(NEUTRAL_POSE, NEUTRAL_MOUTH, 0.0)
    meta = {
        "seed": int(seed), "identity_seed": int(idn.seed), "fps": FPS,
        "sample_rate": SAMPLE_RATE, "size": int(size), "n_frames": n_frames,
        "texts": track.texts, "voice": track.voice.__dict__.copy(), "snr_db": track.snr_db,
        "phonemes": [[n, round(a, 5), round(b, 5)] for n, a, b in track.phonemes],
        "hair_style": idn.hair_style, "background": idn.background, "glasses": idn.glasses,
        "hat": idn.hat, "earrings": idn.earrings,
    }
    return Clip(frames=frames, audio=track.audio, mouth=mouth, reference=ref,
                mouth_box=mouth_box(idn, pose), pose=pose, blink=blink, meta=meta)
