"""Long-horizon evaluation: stream one identity for M minutes of video over looped speech clips
and record drift metrics per window.

The audio of the identity's clips is pushed one clip at a time, always ahead of generation
(generation speed is the only limit), and the ground-truth mouth track is appended with it, so
truth index k belongs to input video frame k. Produced frame j shows input frame j + drop, with
drop = 4 * frames_per_block - len(first block) - the lead-in frames (engine/session.py: the
published rule drops 3 of the first block's 12 frames; the session pads them with silence
first, so drop is 0): measured, not assumed.

Every `window_seconds` of produced video one row is recorded (see `ROW_FIELDS`): lip-sync
correlation of the measured mouth opening with the truth (eval/lipsync.py), face landmark
measures from MediaPipe FaceMesh (eval/landmarks.py: detection rate, landmark lip gap vs the
truth, vs the audio loudness and vs the pixel opening; NaN when landmarks are off), colour and
identity drift vs the reference image and flicker (eval/metrics.py), non-finite values in the
block latents, RSS, and the generation speed. The loudness (RMS per video frame) is cut from the
pushed audio with the truth, so it is aligned to the produced frames the same way.
"""
from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..benchmark.memory import rss_mib
from ..engine.pipelined import check_schedule
from ..config import DTYPES
from . import landmarks, metrics
from .clips import DEFAULT_DIR, LoopedClips, load_clip_set

# column -> meaning; the CSV header, the JSON rows and the plot panels follow this order
ROW_FIELDS = {
    "window": "window index",
    "video_minutes": "video time at the window's end, minutes",
    "wall_seconds": "wall time since the session started, s",
    "gen_fps": "frames generated per wall second in this window (the previous window's measuring excluded)",
    "lipsync_r": "Pearson r of measured mouth opening vs ground truth (best lag)",
    "lipsync_lag": "lag of the best r, frames",
    **landmarks.WINDOW_FIELDS,
    "colour_delta_e": "Delta E (Lab) of the mean colour vs the reference",
    "colour_hist_dist": "RGB histogram total-variation distance vs the reference",
    "identity_dist": "gradient-descriptor cosine distance vs the reference",
    "flicker": "mean |frame - previous frame|, uint8 units",
    "nonfinite": "NaN/inf values in the window's block latents",
    "rss_mib": "resident memory at the window's end, MiB",
}
# columns a CSV may lack (written before they existed): read as NaN
OPTIONAL_FIELDS = tuple(landmarks.WINDOW_FIELDS)
# the metrics whose trend decides "no drift"
DRIFT_METRICS = ("colour_delta_e", "colour_hist_dist", "identity_dist")


@dataclass(frozen=True)
class EvalConfig:
    minutes: float = 60.0
    window_seconds: float = 30.0
    model: str = "tiny"
    identity: str | None = None
    clips_dir: str = str(DEFAULT_DIR)
    seed: int = 0
    dtype: str = "bf16"
    precision: str = "bf16"  # "fp8": the published --fp8 linears
    kv_cache_dtype: str | None = None  # "fp8": E4M3 K/V caches (cache/kv.py)
    compile: bool = False  # torch.compile the DiT blocks (model/compile.py)
    schedule: str = "sequential"  # "pipelined": TPP in one process (engine/pipelined.py)
    device: str = "cpu"
    landmarks: bool | None = None  # face landmark measures: None = when the face env exists

    def __post_init__(self) -> None:
        if not self.minutes > 0:
            raise ValueError(f"minutes must be > 0, got {self.minutes}")
        if not self.window_seconds > 0:
            raise ValueError(f"window_seconds must be > 0, got {self.window_seconds}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        check_schedule(self.schedule)


def _lipsync_fns():
    """(mouth_opening, lipsync_correlation) from eval/lipsync.py, or None if it is not there."""
    try:
        from .lipsync import lipsync_correlation, mouth_opening
    except ImportError:
        return None
    return mouth_opening, lipsync_correlation


def _landmarker(cfg: EvalConfig, log) -> tuple[landmarks.FaceLandmarker | None, str]:
    """The face landmark worker, or None with why: off by request, or (cfg.landmarks None) the
    face env is missing, which is then said on `log`. cfg.landmarks True and no env: FaceEnvMissing."""
    if cfg.landmarks is False:
        return None, "off (--no-landmarks): landmark columns are NaN"
    try:
        python = landmarks.face_python()
    except landmarks.FaceEnvMissing as e:
        if cfg.landmarks:
            raise
        if log is not None:
            print(f"[eval] note: landmark measures off ({e})", file=log, flush=True)
        return None, "off (no face env: `make face-env`): landmark columns are NaN"
    lm = landmarks.FaceLandmarker(python)
    return lm, (f"MediaPipe FaceMesh (mediapipe {lm.info['mediapipe']}, {python}): eval/landmarks.py")


def reference_frame(image, pipe) -> np.ndarray:
    """The reference image exactly as the session prepares it, as uint8 [H, W, 3]."""
    from ..engine.executor import to_uint8
    from ..io.image import load_image, output_size, prepare_reference

    img = load_image(image)
    ref = prepare_reference(img, output_size(img.shape[:2], pipe.max_area))  # [3, H, W] in [-1, 1]
    return to_uint8(ref[:, None].float())[0].numpy()


class _Window:
    """Frames and counters of the window being filled."""

    def __init__(self):
        self.frames: list[np.ndarray] = []
        self.nonfinite = 0

    def count(self) -> int:
        return sum(len(f) for f in self.frames)

    def take(self, n: int) -> np.ndarray:
        """Remove and return the first n frames [n, H, W, 3]; the rest stays."""
        allf = np.concatenate(self.frames)
        self.frames = [allf[n:]] if len(allf) > n else []
        return allf[:n]


def run_eval(cfg: EvalConfig, on_row: Callable[[dict], None] | None = None, log=sys.stderr) -> dict:
    """Run the evaluation; `on_row(row)` sees every window row as soon as it is measured.
    Returns {"config", "note", "weights", "identity", "frames", "drop", "wall_seconds", "rows", "lipsync",
    "landmarks"}."""
    from ..engine import Pipeline
    from ..engine.session import STREAM_START_DROP

    if cfg.landmarks:
        landmarks.face_python()  # FaceEnvMissing before anything is loaded
    clip_set = load_clip_set(cfg.clips_dir)
    ident = clip_set.identity(cfg.identity)
    source = LoopedClips(clip_set, ident.name)
    dtype = DTYPES[cfg.dtype]
    pipe = Pipeline.from_pretrained(cfg.model, device=cfg.device, dtype=dtype, seed=cfg.seed, quiet=True,
                                    precision=cfg.precision, kv_cache_dtype=cfg.kv_cache_dtype, compile=cfg.compile,
                                    schedule=cfg.schedule)
    if pipe.stream.fps != clip_set.fps:
        raise ValueError(f"clip set is at {clip_set.fps} fps, the model streams at {pipe.stream.fps} fps")
    ref = reference_frame(ident.image, pipe)
    lipsync = _lipsync_fns()
    stack = contextlib.ExitStack()
    lm, lm_note = _landmarker(cfg, log)
    if lm is not None:
        stack.enter_context(lm)
    fps = clip_set.fps
    target = max(1, round(cfg.minutes * 60 * fps))
    win_frames = max(1, round(cfg.window_seconds * fps))
    truth_parts: list[np.ndarray] = []
    loud_parts: list[np.ndarray] = []  # audio RMS per input frame, aligned with truth_parts
    truth_len, emitted, drop = 0, 0, None
    rows: list[dict] = []
    window, prev_frame = _Window(), None
    t_start = time.perf_counter()
    t_win = t_start

    def close_window(frames: np.ndarray) -> None:
        nonlocal prev_frame, t_win
        now = time.perf_counter()
        end = emitted - window.count()  # produced frames up to the end of `frames`
        start = end - len(frames)
        truth = np.concatenate(truth_parts)[start + drop:end + drop]
        loudness = np.concatenate(loud_parts)[start + drop:end + drop]
        r, lag, opening = float("nan"), float("nan"), None
        if lipsync is not None:
            opening = lipsync[0](frames, ident.mouth_box)
            r, lag = lipsync[1](opening, truth, max_lag=2)
        lmrow = landmarks.window_measures(lm.measure(frames) if lm is not None else None, truth, loudness, opening)
        row = {"window": len(rows), "video_minutes": end / fps / 60, "wall_seconds": now - t_start,
               "gen_fps": len(frames) / max(now - t_win, 1e-9), "lipsync_r": float(r), "lipsync_lag": float(lag),
               **lmrow,
               "colour_delta_e": float(metrics.colour_delta_e(frames, ref).mean()),
               "colour_hist_dist": float(metrics.colour_histogram_distance(frames, ref).mean()),
               "identity_dist": float(metrics.identity_distance(frames, ref).mean()),
               "flicker": float(metrics.flicker(frames, prev_frame).mean()) if prev_frame is not None or len(frames) > 1
               else float("nan"),
               "nonfinite": window.nonfinite, "rss_mib": rss_mib()}
        window.nonfinite = 0
        prev_frame, t_win = frames[-1], time.perf_counter()  # measuring is not generation time
        rows.append(row)
        if on_row is not None:
            on_row(row)
        if log is not None:
            print(f"[eval] {row['video_minutes']:7.2f} min  r {row['lipsync_r']:+.3f}  face {row['face_rate']:.2f}  "
                  f"lm r {row['lm_lip_r']:+.3f} loud {row['lm_loudness_r']:+.3f}  dE {row['colour_delta_e']:.2f}  "
                  f"id {row['identity_dist']:.4f}  flicker {row['flicker']:.2f}  nonfinite {row['nonfinite']}  "
                  f"rss {row['rss_mib']:.0f} MiB  {row['gen_fps']:.1f} fps", file=log, flush=True)

    with stack, pipe.session(ident.image, seed=cfg.seed) as sess:
        blocks = sess.frames()
        n = 0
        while emitted < target:
            while sess.audio.blocks_ready() <= n:  # keep audio ahead: frames() then never waits
                pcm, truth = source.next_clip()
                sess.push_audio(pcm, clip_set.sample_rate)
                truth_parts.append(truth)
                loud_parts.append(landmarks.frame_rms(pcm, source.samples_per_frame))
                truth_len += len(truth)
            block = next(blocks)
            n += 1
            if drop is None:
                lead = STREAM_START_DROP - sess.input_offset_frames  # silent frames put before the audio
                drop = 4 * pipe.stream.frames_per_block - len(block.video) - lead
            video = block.video[: target - emitted]
            emitted += len(video)
            window.frames.append(video)
            if block.latent is not None:
                window.nonfinite += int((~torch.isfinite(block.latent)).sum())
            while window.count() >= win_frames:
                close_window(window.take(win_frames))
        if window.count() >= max(2, win_frames // 4):  # a tail of at least a quarter window
            close_window(window.take(window.count()))
    return {"config": cfg.__dict__, "note": pipe.note, "weights": pipe.weights, "identity": ident.name, "mouth_box": list(ident.mouth_box),
            "frames": emitted, "drop": drop, "wall_seconds": time.perf_counter() - t_start, "rows": rows,
            "lipsync": "eval/lipsync.py" if lipsync is not None else "unavailable (eval/lipsync.py missing): r is NaN",
            "landmarks": lm_note}
