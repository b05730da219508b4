"""Face landmarks for `liveavatar-rt eval`: MediaPipe FaceMesh in its own process and Python.

Run by the face environment's Python (`make face-env`: .venv-face with mediapipe==0.10.21,
which needs numpy<2 and protobuf<5 while the runtime has numpy 2), never imported by the
runtime: standard library + numpy + mediapipe only (no liveavatar_rt, no torch). The driver is
liveavatar_rt/eval/landmarks.py; it starts this file as `python -I face_worker.py [--static]`.
`python face_worker.py --check` loads the model once and prints the versions (the Makefile's
check that the environment works).

The model is the one bundled in the mediapipe wheel (legacy `mp.solutions.face_mesh`:
face_detection_short_range.tflite + face_landmark_with_attention.tflite); nothing is
downloaded. FaceMesh(static_image_mode=False: a video stream, the face is tracked from frame
to frame and re-detected when lost; --static: every frame detected on its own),
refine_landmarks=True (478 points), max_num_faces=1.

Protocol, binary, little-endian, over stdin (requests) and stdout (replies):
    worker -> parent, once, when the model is loaded:  b"LMK1" uint32 len, then len bytes of
        UTF-8 JSON {"mediapipe", "numpy", "static"}
    parent -> worker, any number of batches:           b"FRMS" uint32 n, uint32 h, uint32 w,
        then n*h*w*3 bytes: uint8 RGB frames [n, h, w, 3] (n may be 0)
    worker -> parent, one reply per batch:             b"RSLT" uint32 n, then n*FIELDS float64
        [n, FIELDS] in the order of `FIELDS` (NaN where no face was found)
    parent closes stdin: the worker exits 0. Anything malformed: a message on stderr, exit 2.
Everything else the process prints (mediapipe's logging, native code writing to fd 1) goes to
stderr: stdout carries only the protocol.

Per frame:
    found       1.0 when a face was found, else 0.0
    lip_gap     |inner upper lip (13) - inner lower lip (14)| / face height |forehead top (10)
                - chin bottom (152)|, in pixels (aspect-correct): 0 closed, ~0.1 wide open
    x0 y0 x1 y1 the box around all 478 landmarks, normalized to the frame (clipped to [0, 1])
"""
from __future__ import annotations

import json
import os
import struct
import sys

# Landmark indices of the 468/478-point FaceMesh topology (mediapipe face_mesh_connections /
# canonical_face_model_uv_visualization).
UPPER_LIP_INNER = 13  # middle of the upper lip's inner edge
LOWER_LIP_INNER = 14  # middle of the lower lip's inner edge
FOREHEAD_TOP = 10  # top of the face oval, on the midline
CHIN_BOTTOM = 152  # bottom of the chin, on the midline

FIELDS = ("found", "lip_gap", "x0", "y0", "x1", "y1")
HELLO, FRAMES, RESULT = b"LMK1", b"FRMS", b"RSLT"
MAX_BATCH_BYTES = 1 << 30  # a request larger than this is refused (a corrupt header, not frames)


class ProtocolError(Exception):
    pass


def _read_exact(f, n: int) -> bytes | None:
    """n bytes from f; None at a clean EOF before the first byte, ProtocolError when cut short."""
    buf = bytearray()
    while len(buf) < n:
        chunk = f.read(n - len(buf))
        if not chunk:
            if not buf:
                return None
            raise ProtocolError(f"stream ended after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def measure(mesh, frame, np) -> list[float]:
    """One uint8 RGB frame [h, w, 3] -> the values of FIELDS."""
    h, w = frame.shape[:2]
    res = mesh.process(frame)
    if not res.multi_face_landmarks:
        return [0.0] + [float("nan")] * (len(FIELDS) - 1)
    lm = res.multi_face_landmarks[0].landmark
    xy = np.array([(p.x, p.y) for p in lm], np.float64)  # normalized to the frame
    px = xy * (w, h)
    face_h = float(np.linalg.norm(px[FOREHEAD_TOP] - px[CHIN_BOTTOM]))
    gap = float(np.linalg.norm(px[UPPER_LIP_INNER] - px[LOWER_LIP_INNER])) / face_h if face_h > 0 else float("nan")
    lo, hi = np.clip(xy.min(0), 0, 1), np.clip(xy.max(0), 0, 1)
    return [1.0, gap, float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])]


def serve(inp, out, static: bool) -> int:
    import numpy as np
    import mediapipe as mp

    mesh = mp.solutions.face_mesh.FaceMesh(static_image_mode=static, refine_landmarks=True, max_num_faces=1,
                                           min_detection_confidence=0.5, min_tracking_confidence=0.5)
    hello = json.dumps({"mediapipe": mp.__version__, "numpy": np.__version__, "static": static}).encode()
    out.write(HELLO + struct.pack("<I", len(hello)) + hello)
    out.flush()
    with mesh:
        while True:
            head = _read_exact(inp, 16)
            if head is None:
                return 0
            magic, n, h, w = struct.unpack("<4sIII", head)
            if magic != FRAMES:
                raise ProtocolError(f"expected {FRAMES!r}, got {magic!r}")
            size = n * h * w * 3
            if size > MAX_BATCH_BYTES or (n and (h < 1 or w < 1)):
                raise ProtocolError(f"bad batch header: n={n} h={h} w={w}")
            data = _read_exact(inp, size) if size else b""
            if data is None:
                raise ProtocolError(f"stream ended before the {n} frames")
            frames = np.frombuffer(data, np.uint8).reshape(n, h, w, 3)
            rows = np.array([measure(mesh, np.ascontiguousarray(f), np) for f in frames],
                            np.float64).reshape(n, len(FIELDS))
            out.write(RESULT + struct.pack("<I", n) + rows.astype("<f8").tobytes())
            out.flush()


def check() -> int:
    """Load the model, run it on a blank frame, print the versions: the environment works."""
    import numpy as np
    import mediapipe as mp

    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=True, max_num_faces=1) as mesh:
        found = measure(mesh, np.zeros((64, 64, 3), np.uint8), np)[0]
    print(f"face env ok: mediapipe {mp.__version__}, numpy {np.__version__}, FaceMesh loaded "
          f"(blank frame: {'a face?!' if found else 'no face'})", file=sys.stderr)
    return 0


def main(argv: list[str]) -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    # run as a script, this directory would be first on sys.path and its modules (cli, metrics,
    # output, ...) could shadow what mediapipe imports; the driver also passes -I
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    if argv[:1] == ["--check"]:
        return check()
    if any(a not in ("--static",) for a in argv):
        print(f"usage: python {os.path.basename(__file__)} [--static] | --check", file=sys.stderr)
        return 2
    # stdout is the protocol: keep a private handle on it and send fd 1 (native logging) to stderr
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    inp = sys.stdin.buffer
    try:
        return serve(inp, out, static="--static" in argv)
    except ProtocolError as e:
        print(f"face_worker: protocol error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
