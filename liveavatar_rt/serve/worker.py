"""One session's compute thread: open the session, pull blocks, encode them, post events.

The network loop never waits on the model: it only pushes audio (cheap, thread-safe) and
receives events from this thread through `post` (loop.call_soon_threadsafe). Events, in order:
    ("ready", session)                          the session is open (image encoded, prefilled)
    ("init", mime, bytes)                       the fMP4 init segment (after the first block)
    ("segment", block, start_frame, frames, bytes, compute_s)   one block (frames 0: the tail)
    ("done",)                                   end_audio() was called and every block is out
    ("error", code, message)                    the session failed; nothing follows
"""
from __future__ import annotations

import threading
import time
from typing import Callable

from ..engine.session import SessionClosed
from ..io.image import ImageError
from .encoder import SegmentEncoder
from .protocol import StartRequest

# frames() wakes up this often to notice stop(); a block is never interrupted half way
POLL_S = 0.2


class StreamWorker(threading.Thread):
    def __init__(self, engine, request: StartRequest, post: Callable[[tuple], None], name: str):
        super().__init__(daemon=True, name=f"liveavatar-serve-{name}")
        self.engine, self.request, self._post = engine, request, post
        self._stop_event = threading.Event()
        self.session = None

    def stop(self) -> None:
        """Ask the thread to end; it closes the session itself (never under a running block)."""
        self._stop_event.set()

    @property
    def stopping(self) -> bool:
        return self._stop_event.is_set()

    def post(self, event: tuple) -> None:
        if self.stopping and event[0] != "error":
            return
        try:
            self._post(event)
        except RuntimeError:  # the event loop is gone (server shutting down)
            self._stop_event.set()

    def run(self) -> None:
        sess = None
        try:
            req = self.request
            sess = self.engine.open(req.image, prompt=req.prompt, seed=req.seed)
            if self.stopping:
                return
            self.session = sess
            self.post(("ready", sess))
            self._stream(sess)
        except ImageError as e:
            self.post(("error", "bad_image", str(e)))
        except ValueError as e:  # e.g. a prompt for a model without a text encoder
            self.post(("error", "bad_request", str(e)))
        except SessionClosed as e:
            if not self.stopping:
                self.post(("error", "internal", f"the session closed unexpectedly: {e}"))
        except Exception as e:  # a model failure ends this session only; the server keeps serving
            self.post(("error", "internal", f"rendering failed: {type(e).__name__}: {e}"))
        finally:
            if sess is not None:
                try:
                    sess.close()
                except Exception:  # a failing close must not hide the error above
                    pass

    def _stream(self, sess) -> None:
        enc = SegmentEncoder(sess.width, sess.height, fps=self.engine.fps, sample_rate=self.engine.audio_rate)
        start_frame = 0
        while not self.stopping:
            try:
                for block in sess.frames(timeout=POLL_S):
                    if self.stopping:
                        return
                    t = time.perf_counter()
                    seg = enc.encode(block.video, block.audio)
                    compute = block.timings.get("total", 0.0) + (time.perf_counter() - t)
                    if block.index == 0:
                        self.post(("init", enc.mime, enc.init))
                    n = len(block.video)
                    if seg is not None:  # x264 (zerolatency) emits every frame at once; be safe anyway
                        self.post(("segment", block.index, start_frame, n, seg, compute))
                    start_frame += n
                break  # frames() returned: the audio has ended and every block is out
            except TimeoutError:
                continue  # no audio for POLL_S: look at stop() and wait again
        if self.stopping:
            return
        tail = enc.flush()
        if tail is not None:
            self.post(("segment", -1, start_frame, 0, tail, 0.0))
        self.post(("done",))
