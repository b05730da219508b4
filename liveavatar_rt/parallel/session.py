"""TPPSession: a streaming session on the ring, with engine Session's shape.

    with ring.session(image, seed=0) as sess:      # ring: FrontRing / LocalRing (front.py, launch.py)
        sess.push_audio(pcm, 16000)                # any thread, any chunk size
        sess.end_audio()
        for block in sess.frames(): ...            # engine.session.Block, the frames Session gives

The image is encoded here, on rank 0, by the same code as Session (reference latent + motion
latents of the image repeated 73 times); the ring's driver thread sends the latents to every
rank and does all of rank 0's communication and compute (front.py).
"""
from __future__ import annotations

import threading
import time
from typing import Iterator

import torch

from ..engine.session import Block, SessionClosed
from .comm import SIGNAL, TPPError, notify
from .protocol import SessionHeader

_DONE = object()  # end-of-session marker in TPPSession._blocks


class TPPSession:
    """A streaming session on the ring: the same calls and Block objects as engine Session."""

    def __init__(self, ring: "FrontRing", image, text: torch.Tensor, seed: int, sink_replacement: bool,
                 positions, sink_offset: int | None, keep_latents: bool):
        from ..engine.positions import PositionPolicy
        from ..io.image import load_image, output_size, prepare_reference

        t0 = time.perf_counter()
        pipe = ring.pipe
        self.ring, self.seed, self.pipe = ring, seed, pipe
        stream, dtype = pipe.stream, pipe.dtype
        img = load_image(image)
        self.height, self.width = output_size(img.shape[:2], pipe.max_area)
        ref = prepare_reference(img, (self.height, self.width))
        # the same conditioning as Session (and its per-image cache): computed here, sent to every rank
        cond = pipe.conditioning_cache.get(pipe.vae, ref, stream.motion_frames, dtype)
        self.ref_latent, self.motion = cond.ref_latent, cond.motion
        self.text = text.to(dtype)
        pos = positions or PositionPolicy()
        h, w = self.ref_latent.shape[-2:]
        self.header = SessionHeader(
            session=ring._next_session_id(), seed=seed, height=self.height, width=self.width, lat_h=h, lat_w=w,
            text_len=self.text.shape[0], text_dim=self.text.shape[1], dtype=dtype,
            motion_frames=self.motion.shape[2], sink_replacement=sink_replacement, sink_offset=sink_offset,
            position_mode=pos.mode, position_limit=pos.limit, position_period=pos.period)
        self.audio = pipe.new_audio_stream(lead_in=True)
        self.input_offset_frames = 0
        self.keep_latents = keep_latents
        self.latents: list[torch.Tensor] = []  # clean block latents [1, 16, F, h, w] if keep_latents
        self.stats: dict = {}
        self.error: BaseException | None = None
        self._lock = threading.Lock()  # audio stream
        self._blocks: list = []  # Blocks (or _DONE / an exception) from the driver, in order
        self._cancel = False
        self._closed = False
        self._finished = threading.Event()
        self.encode_seconds = time.perf_counter() - t0
        self.started_at = time.perf_counter()
        ring._start(self)

    # ---- audio in -----------------------------------------------------------------------
    def push_audio(self, pcm, sample_rate: int) -> None:
        self._check_open()
        with self._lock:
            self.audio.push(pcm, sample_rate)
        notify()

    def end_audio(self) -> None:
        self._check_open()
        with self._lock:
            self.audio.end()
        notify()

    # ---- video out ----------------------------------------------------------------------
    def frames(self, timeout: float | None = None) -> Iterator[Block]:
        """Yield blocks in order; returns after the last block once end_audio() was called.
        TimeoutError if no block within `timeout` s (None: wait as long as the audio takes;
        a failing rank still ends the wait, with TPPError)."""
        while True:
            self._check_open()
            deadline = None if timeout is None else time.monotonic() + timeout
            with SIGNAL:
                while not self._blocks:
                    if self.ring._stopped.is_set():
                        raise TPPError(f"the TPP ring stopped: {self.ring.error}")
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise TimeoutError(f"no block within {timeout} s")
                    SIGNAL.wait(0.25 if left is None else min(left, 0.25))
                item = self._blocks.pop(0)
            if item is _DONE:
                with SIGNAL:
                    self._blocks.insert(0, _DONE)  # later calls return at once, as Session's do
                return
            if isinstance(item, BaseException):
                self.error = item
                raise item
            yield item

    def _check_open(self) -> None:
        if self._closed:
            raise SessionClosed("session is closed" + (f" after an error: {self.error!r}" if self.error else ""))

    def close(self) -> None:
        """Cancel what is left (the ring ends the session on every rank) and wait until it has."""
        if self._closed:
            return
        self._closed = True
        self._cancel = True
        notify()
        if self.ring.error is not None or self.ring._stopped.is_set():
            return
        if not self._finished.wait(self.ring.timeout + 5):
            raise TPPError("the ring did not end the session in time")

    def __enter__(self) -> "TPPSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
