"""Alignment of 50 Hz audio features to 25 fps video frames.

Published (Wan S2V `linear_interpolation` + `get_audio_embed_bucket_fps`, m = 0):
  1. 50 -> 30 Hz: F.interpolate(size=T30 = int(T50 / 50 * 30), mode='linear',
     align_corners=True), i.e. 30 Hz sample j sits at 50 Hz position j * (T50 - 1) / (T30 - 1).
  2. video frame k takes 30 Hz sample idx_k = round(k * 30 / fps) (numpy linspace + round; for
     fps 25 this is exactly (6k + 2) // 5, ties never occur); idx_k >= T30 -> zero features.
  3. the frame count is rounded up to whole clips: int(T30 / (batch_frames * 30 / fps)) + 1
     clips of batch_frames frames (one extra clip when T30 is an exact multiple).
Step 1 depends on the total length T50, so the published mapping cannot be streamed.

Streaming (StreamingAligner) uses the fixed-rate mapping instead: 30 Hz sample j sits at 50 Hz
position p_j = 5j / 3 (= j * 50 / 30), linearly interpolated between floor(p_j) and the next
feature. Difference from the offline mapping: both start at p_0 = 0; the offline slope
(T50 - 1) / (T30 - 1) exceeds 5/3 by O(1 / T50), so offline positions run ahead by up to
(T50 - 1) - 5/3 (T30 - 1) in [2/3, 7/3) feature frames at the very end (<= 47 ms), decreasing
linearly towards 0 at the start; at any fixed time it vanishes as the total length grows.
Lookahead: video frame k needs 50 Hz features up to index ceil(p_{idx_k}) <= 2k + 1, i.e.
at most one feature (20 ms) past frame k's start time 2k; with LogMelFeatures/wav2vec2 framing
(feature i ends at sample 320 i + 400) that is 16 kHz sample 640 k + 720: 80 samples (5 ms)
past the end of frame k's own 40 ms of audio.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

FEAT_RATE = 50  # Hz, wav2vec2 frame rate
MID_RATE = 30  # Hz, the published intermediate rate (`video_rate` of the audio encoder)


def video_to_mid_index(k: np.ndarray, fps: int = 25) -> np.ndarray:
    """30 Hz sample index taken by video frames k: round(k * 30 / fps), ties to even as
    np.round, computed exactly in integers (int64 array in, int64 array out)."""
    k = np.asarray(k, np.int64)
    num, den = k * MID_RATE, fps
    q, r = num // den, num % den
    up = (2 * r > den) | ((2 * r == den) & (q % 2 == 1))
    return q + up


def published_mid_len(t50: int) -> int:
    """T30 of the published 50 -> 30 Hz interpolation (same float expression order)."""
    return int(t50 / float(FEAT_RATE) * MID_RATE)


def published_num_clips(t50: int, fps: int = 25, batch_frames: int = 48) -> int:
    """Published `min_batch_num`: clips of `batch_frames` video frames generated for T50 features."""
    return int(published_mid_len(t50) / (batch_frames * (MID_RATE / fps))) + 1


def align_offline(feat50, fps: int = 25, batch_frames: int = 48) -> torch.Tensor:
    """The published alignment. feat50: [L, D, T50] (torch or numpy, 50 Hz) ->
    [L, D, n_video] in feat50's dtype, n_video = published_num_clips(T50) * batch_frames.

    Note: the 50 -> 30 Hz step interpolates with align_corners=True to T30 = int(T50*0.6)
    samples, so every output depends on the TOTAL length T50 (not streamable; see
    StreamingAligner for the causal fixed-rate mapping)."""
    x = torch.as_tensor(feat50)
    if x.ndim != 3:
        raise ValueError(f"feat50 must be [layers, dim, T50], got shape {tuple(x.shape)}")
    t50 = x.shape[2]
    t30 = published_mid_len(t50)
    if t30 < 1:
        raise ValueError(f"{t50} feature frames are too few: the published 30 Hz length int({t50}*0.6) is 0")
    mid = F.interpolate(x, size=t30, mode="linear", align_corners=True)  # [L, D, T30]
    n_clips = published_num_clips(t50, fps, batch_frames)
    n_video = n_clips * batch_frames
    # Published get_sample_indices(30, total, fps, n_video, fixed_start=0): linspace + round.
    total = math.ceil(n_video / fps * MID_RATE)
    idx = np.round(np.linspace(0.0, n_video / fps, n_video, endpoint=False) * MID_RATE).astype(int)
    idx = np.clip(idx, 0, total - 1)
    out = torch.zeros(x.shape[0], x.shape[1], n_video, dtype=x.dtype)
    valid = torch.from_numpy(idx < t30)
    out[:, :, valid] = mid[:, :, torch.from_numpy(idx[idx < t30])]
    return out


def _fixed_rate_frames(feat: np.ndarray, first: int, k: np.ndarray, fps: int) -> np.ndarray:
    """Frames k from features feat[..., i - first] with the fixed-rate mapping; elementwise
    only (so a frame's value never depends on which other frames are computed with it)."""
    j = video_to_mid_index(k, fps)
    i0, r = (j * FEAT_RATE) // MID_RATE, (j * FEAT_RATE) % MID_RATE
    lam = (r / MID_RATE)[None, None, :]
    x0 = feat[:, :, i0 - first].astype(np.float64)
    x1 = feat[:, :, np.minimum(i0 + 1, first + feat.shape[2] - 1) - first].astype(np.float64)
    y = np.where(lam == 0.0, x0, x0 * (1.0 - lam) + x1 * lam)
    return y.astype(np.float32)


class StreamingAligner:
    """Causal 50 Hz -> fps alignment. push(feat [L, D, t] float32, 50 Hz) -> the video frames
    [L, D, k] float32 whose inputs are now all present (see module doc for the lookahead).
    Frames beyond the last feature are never produced here (the caller pads with zeros).
    State: the <= 2 features the next frame needs + counters."""

    def __init__(self, fps: int = 25):
        if not isinstance(fps, int) or fps < 1:
            raise ValueError(f"fps must be a positive int, got {fps!r}")
        self.fps = fps
        self._buf: np.ndarray | None = None  # features [L, D, n] from absolute index _first
        self._first = 0
        self.n_features = 0
        self.frames_out = 0

    def need(self, k) -> np.ndarray:
        """Number of features (prefix length) video frames k (int64 array) need."""
        j = video_to_mid_index(k, self.fps)
        return (j * FEAT_RATE) // MID_RATE + np.where((j * FEAT_RATE) % MID_RATE, 2, 1)

    @property
    def state_features(self) -> int:
        return 0 if self._buf is None else int(self._buf.shape[2])

    def push(self, feat) -> np.ndarray:
        feat = np.asarray(feat, np.float32)
        if feat.ndim != 3:
            raise ValueError(f"features must be [layers, dim, t], got shape {feat.shape}")
        self._buf = feat if self._buf is None else np.concatenate([self._buf, feat], axis=2)
        self.n_features += feat.shape[2]
        # need(k) >= k * 50 / fps, so no frame beyond n * fps / 50 + 1 can be ready.
        cand = np.arange(self.frames_out, max(self.frames_out, self.n_features * self.fps // FEAT_RATE + 2))
        k = cand[self.need(cand) <= self.n_features]  # need() is monotone: a prefix
        k_end = self.frames_out + k.size
        out = _fixed_rate_frames(self._buf, self._first, k, self.fps)
        self.frames_out = k_end
        # Keep features from the next frame's floor(p) on.
        j = int(video_to_mid_index(np.array([k_end]), self.fps)[0])
        keep = min((j * FEAT_RATE) // MID_RATE, self.n_features)
        if keep > self._first:
            self._buf = self._buf[:, :, keep - self._first:].copy()
            self._first = keep
        return out


def align_fixed_rate(feat50, fps: int = 25) -> np.ndarray:
    """One-shot fixed-rate alignment: [L, D, T50] -> [L, D, k] float32; equal bit for bit to
    StreamingAligner fed the same features in any chunking."""
    return StreamingAligner(fps).push(np.asarray(feat50, np.float32))
