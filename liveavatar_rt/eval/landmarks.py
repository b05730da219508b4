"""Face landmarks for the evaluation: MediaPipe FaceMesh run in its own Python, driven from here.

    with FaceLandmarker() as lm:             # starts eval/face_worker.py once (model load ~1 s)
        marks = lm.measure(frames)           # uint8 [T, H, W, 3] RGB -> Landmarks (numpy arrays)
    window_measures(marks, truth, loudness, pixel_opening) -> the per-window row values

mediapipe==0.10.21 (its legacy `solutions.face_mesh` ships the tflite models in the wheel:
nothing is downloaded) needs numpy<2 and protobuf<5, the runtime has numpy 2, so it lives in its
own virtual environment: `make face-env` creates `.venv-face` (`make test` does it too). The
Python used is $LIVEAVATAR_RT_FACE_PYTHON, else `<repo>/.venv-face/bin/python`; missing, it is
`FaceEnvMissing`, naming `make face-env`.

The worker process is started once and fed frames in batches of `batch` frames over a pipe
(protocol in face_worker.py), so memory stays bounded whatever the length of `frames`; every
read and write has a deadline (`start_timeout` for the model load, then `timeout` + a per-frame
allowance per batch): a stuck or dead worker is killed and `FaceWorkerError` raised with the
tail of its stderr, never a hang.

Measures (one window of produced frames; truth and loudness aligned to them exactly as the
pixel lip-sync metric's truth, eval/longrun.py):
    face_rate      fraction of frames where FaceMesh finds a face
    lm_gap         mean inner-lip gap / face height over the frames with a face
    lm_lip_r/lag   Pearson r (best lag in [-2, 2] frames, positive: the video is late) of the
                   lip gap vs the clips' ground-truth mouth track, over the frames with a face
    lm_loudness_r/lag   the same vs the audio loudness (RMS of each frame's samples)
    lm_pixel_r     r at lag 0 of the lip gap vs the pixel mouth opening (eval/lipsync.py): do
                   the two measurements agree
"""
from __future__ import annotations

import json
import math
import os
import select
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import envvars

REPO = Path(__file__).resolve().parents[2]
DEFAULT_FACE_PYTHON = REPO / ".venv-face" / "bin" / "python"
WORKER = Path(__file__).with_name("face_worker.py")
# face_worker.py's protocol (that file cannot be imported here: it runs in the face env)
FIELDS = ("found", "lip_gap", "x0", "y0", "x1", "y1")
HELLO, FRAMES, RESULT = b"LMK1", b"FRMS", b"RSLT"
MAX_LAG = 2  # frames, as the pixel lip-sync metric (eval/longrun.py)
MIN_PAIRS = 3  # fewer frames with a face (at a lag): r is NaN


class FaceEnvMissing(RuntimeError):
    """The face landmark environment (.venv-face, `make face-env`) is not there."""


class FaceWorkerError(RuntimeError):
    """The face worker failed, died or did not answer in time."""


def face_python() -> Path:
    """The face environment's Python: $LIVEAVATAR_RT_FACE_PYTHON, else <repo>/.venv-face/bin/python.
    Raises FaceEnvMissing (naming `make face-env`) when it is not an executable file."""
    env = envvars.face_python()
    path = Path(env) if env else DEFAULT_FACE_PYTHON
    if not (path.is_file() and os.access(path, os.X_OK)):
        where = f"${envvars.FACE_PYTHON}={env}" if env else f"{DEFAULT_FACE_PYTHON} (set ${envvars.FACE_PYTHON} to use another)"
        raise FaceEnvMissing(
            f"the face landmark environment is missing: no Python at {where}. The eval's landmark measures run "
            f"MediaPipe FaceMesh (mediapipe==0.10.21, which needs numpy<2) in their own virtual environment; "
            f"create it with `make face-env` (`make test` does it too), or run eval with --no-landmarks")
    return path


def face_env_available() -> bool:
    try:
        face_python()
    except FaceEnvMissing:
        return False
    return True


@dataclass(frozen=True)
class Landmarks:
    found: np.ndarray  # bool [T]
    lip_gap: np.ndarray  # float64 [T]: inner-lip gap / face height, NaN without a face
    box: np.ndarray  # float64 [T, 4]: x0, y0, x1, y1 normalized, NaN without a face

    def __len__(self) -> int:
        return len(self.found)


def _ready(fd: int, event: int, timeout: float) -> bool:
    """fd is readable / writable (or at EOF / closed by the peer) within timeout s (poll: any fd number)."""
    p = select.poll()
    p.register(fd, event)
    return bool(p.poll(max(1, math.ceil(timeout * 1000))))


class FaceLandmarker:
    """One face_worker.py process; `measure(frames)` any number of times, then `close()`."""

    def __init__(self, python: str | Path | None = None, static: bool = False, batch: int = 64,
                 start_timeout: float = 120.0, timeout: float = 30.0, per_frame_timeout: float = 1.0):
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        self.python = Path(python) if python is not None else face_python()
        self.batch, self.timeout, self.per_frame_timeout = int(batch), float(timeout), float(per_frame_timeout)
        self._stderr = tempfile.TemporaryFile()
        cmd = [str(self.python), "-I", str(WORKER)] + (["--static"] if static else [])
        try:
            self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr)
        except OSError as e:
            self._stderr.close()
            raise FaceEnvMissing(f"cannot start the face worker with {self.python}: {e}; "
                                 f"recreate the environment with `make face-env`") from e
        self._in, self._out = self._proc.stdin.fileno(), self._proc.stdout.fileno()
        os.set_blocking(self._in, False)
        try:
            if self._recv(4, start_timeout, "the model load") != HELLO:
                self._fail("the worker did not start with the protocol greeting")
            (n,) = struct.unpack("<I", self._recv(4, start_timeout, "the model load"))
            self.info = json.loads(self._recv(n, start_timeout, "the model load"))
        except FaceWorkerError as e:
            self.close()
            raise FaceWorkerError(f"{e}\n(the face environment {self.python} may be broken: `make face-env` "
                                  f"recreates it)") from None

    # -- low level: every read and write has a deadline ---------------------------------------
    def _stderr_tail(self, n: int = 2000) -> str:
        try:
            self._stderr.seek(0, os.SEEK_END)
            size = self._stderr.tell()
            self._stderr.seek(max(0, size - n))
            return self._stderr.read().decode(errors="replace").strip()
        except (OSError, ValueError):
            return ""

    def _fail(self, what: str):
        if self._proc.poll() is None:
            self._proc.kill()
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        tail = self._stderr_tail()
        raise FaceWorkerError(f"face worker ({self.python} {WORKER.name}): {what}; exit code {self._proc.returncode}"
                              + (f"; its stderr ends:\n{tail}" if tail else ""))

    def _recv(self, n: int, timeout: float, what: str) -> bytes:
        deadline = time.monotonic() + timeout
        buf = bytearray()
        while len(buf) < n:
            left = deadline - time.monotonic()
            if left <= 0 or not _ready(self._out, select.POLLIN, left):
                self._fail(f"no reply within {timeout:.0f} s ({what})")
            chunk = os.read(self._out, n - len(buf))
            if not chunk:
                self._fail(f"it exited during {what}")
            buf += chunk
        return bytes(buf)

    def _send(self, data, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        view = memoryview(data).cast("B")
        while len(view):
            left = deadline - time.monotonic()
            if left <= 0 or not _ready(self._in, select.POLLOUT, left):
                self._fail(f"it took no input for {timeout:.0f} s")
            try:
                k = os.write(self._in, view[: 1 << 20])
            except BlockingIOError:
                continue
            except BrokenPipeError:
                self._fail("it exited while frames were being sent")
            view = view[k:]

    # -- API -------------------------------------------------------------------------------------
    def measure(self, frames) -> Landmarks:
        """frames: uint8 [T, H, W, 3] RGB (T may be 0) -> Landmarks of T frames."""
        f = np.asarray(frames)
        if f.dtype != np.uint8 or f.ndim != 4 or f.shape[-1] != 3:
            raise ValueError(f"frames must be uint8 [T, H, W, 3] RGB, got {f.dtype} {f.shape}")
        if self._proc.poll() is not None or self._proc.stdin.closed:
            raise FaceWorkerError("the face worker is closed")
        T, H, W, _ = f.shape
        out = np.empty((T, len(FIELDS)), np.float64)
        for i in range(0, max(T, 1), self.batch):  # T == 0: one empty batch (the protocol allows it)
            chunk = np.ascontiguousarray(f[i:i + self.batch])
            n = len(chunk)
            timeout = self.timeout + self.per_frame_timeout * n
            self._send(FRAMES + struct.pack("<III", n, H, W), timeout)
            if n:
                self._send(chunk, timeout)
            head = self._recv(8, timeout, f"a batch of {n} frames")
            magic, m = struct.unpack("<4sI", head)
            if magic != RESULT or m != n:
                self._fail(f"bad reply header {head!r} to a batch of {n} frames")
            out[i:i + n] = np.frombuffer(self._recv(8 * n * len(FIELDS), timeout, f"a batch of {n} frames"),
                                         "<f8").reshape(n, len(FIELDS))
        found = out[:, 0] > 0.5
        return Landmarks(found=found, lip_gap=out[:, 1], box=out[:, 2:6])

    def close(self, timeout: float = 10.0) -> int | None:
        """Close the worker's input (it exits) and reap it; killed after `timeout` s."""
        proc = getattr(self, "_proc", None)
        if proc is not None:
            for f in (proc.stdin, proc.stdout):
                try:
                    f.close()
                except (OSError, ValueError):
                    pass
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        self._stderr.close()
        return proc.returncode if proc is not None else None

    def __enter__(self) -> "FaceLandmarker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# -- measures ----------------------------------------------------------------------------------
def frame_rms(pcm, samples_per_frame: int) -> np.ndarray:
    """Audio loudness per video frame: the RMS of each frame's samples. pcm float [n] with n a
    whole number of frames (eval/clips.py LoopedClips cuts clips so) -> float64 [n // spf]."""
    x = np.asarray(pcm, np.float64).ravel()
    k = len(x) // int(samples_per_frame)
    return np.sqrt((x[: k * samples_per_frame].reshape(k, -1) ** 2).mean(1))


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    den = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b) / den if den > 1e-12 else float("nan")


def correlation(measured, reference, max_lag: int = MAX_LAG, min_pairs: int = MIN_PAIRS) -> tuple[float, int]:
    """Best Pearson r of measured[t + lag] vs reference[t] over lags in [-max_lag, max_lag],
    as eval/lipsync.py's lipsync_correlation, but over the pairs where both are finite (the
    frames with a face). -> (r, lag); (nan, 0) when no lag has `min_pairs` pairs and a defined r."""
    m = np.asarray(measured, np.float64).ravel()
    t = np.asarray(reference, np.float64).ravel()
    if len(m) != len(t):
        raise ValueError(f"measured has {len(m)} frames, the reference {len(t)}")
    best, best_lag = float("nan"), 0
    for lag in range(-int(max_lag), int(max_lag) + 1):
        a, b = (m[lag:], t[: len(t) - lag]) if lag >= 0 else (m[: len(m) + lag], t[-lag:])
        ok = np.isfinite(a) & np.isfinite(b)
        if ok.sum() < min_pairs:
            continue
        r = _pearson(a[ok], b[ok])
        if not math.isnan(r) and (math.isnan(best) or r > best):
            best, best_lag = r, lag
    return best, best_lag


# row fields (eval/longrun.py ROW_FIELDS) -> meaning
WINDOW_FIELDS = {
    "face_rate": "fraction of frames where MediaPipe FaceMesh finds a face",
    "lm_gap": "mean landmark inner-lip gap / face height (frames with a face)",
    "lm_lip_r": "Pearson r of the landmark lip gap vs ground truth (best lag, frames with a face)",
    "lm_lip_lag": "lag of the best landmark r vs ground truth, frames",
    "lm_loudness_r": "Pearson r of the landmark lip gap vs the audio RMS per frame (best lag)",
    "lm_loudness_lag": "lag of the best landmark r vs loudness, frames",
    "lm_pixel_r": "Pearson r (lag 0) of the landmark lip gap vs the pixel mouth opening",
}


def window_measures(marks: Landmarks | None, truth, loudness, pixel_opening=None) -> dict:
    """The WINDOW_FIELDS of one window; all NaN when `marks` is None (landmarks off)."""
    if marks is None:
        return {k: float("nan") for k in WINDOW_FIELDS}
    n = len(marks)
    gap = np.where(marks.found, marks.lip_gap, np.nan)
    r_t, lag_t = correlation(gap, truth)
    r_l, lag_l = correlation(gap, loudness)
    r_p = correlation(gap, pixel_opening, max_lag=0)[0] if pixel_opening is not None else float("nan")
    face = gap[np.isfinite(gap)]
    return {"face_rate": float(marks.found.mean()) if n else float("nan"),
            "lm_gap": float(face.mean()) if len(face) else float("nan"),
            "lm_lip_r": r_t, "lm_lip_lag": float(lag_t) if math.isfinite(r_t) else float("nan"),
            "lm_loudness_r": r_l, "lm_loudness_lag": float(lag_l) if math.isfinite(r_l) else float("nan"),
            "lm_pixel_r": r_p}


def main(argv: list[str] | None = None) -> int:
    """`python -m liveavatar_rt.eval.landmarks IMAGE...`: the worker's values for each image."""
    from PIL import Image

    paths = sys.argv[1:] if argv is None else argv
    with FaceLandmarker(static=True) as lm:
        for p in paths:
            m = lm.measure(np.asarray(Image.open(p).convert("RGB"))[None])
            print(f"{p}: face {bool(m.found[0])}  lip gap {m.lip_gap[0]:.4f}  box {np.round(m.box[0], 3).tolist()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
