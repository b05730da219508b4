"""What the server renders with: one Pipeline shared by every session, on any layout.

    engine = Engine.load("tiny")                 # single process
    engine = Engine.load("tiny", tpp="2+1")      # pipeline parallel on local processes
    sess = engine.open(image, prompt=None, seed=0)   # engine.Session

The pipeline holds only weights, so sessions opened on it from several worker threads keep
their state apart (engine/session.py). A TPP ring runs one session at a time
(`Pipeline.max_sessions`), so its capacity is 1 whatever the server's max_sessions says.
"""
from __future__ import annotations

import sys
import time

import numpy as np
import torch


from ..config import AUDIO_RATE, DTYPES


class Engine:
    def __init__(self, pipe):
        self.pipe = pipe

        self.fps = int(pipe.stream.fps)
        self.block_frames = 4 * pipe.stream.frames_per_block  # video frames (of audio) per block: 12
        self.audio_rate = AUDIO_RATE  # Block.audio PCM rate
        self.note = getattr(pipe, "note", "")

    @classmethod
    def load(cls, model: str = "tiny", tpp: str | None = None, seed: int = 0, dtype: str = "bf16",
             device: str = "cpu", precision: str = "bf16", decoder: str | None = None,
             kv_cache_dtype: str | None = None, compile: bool = False, schedule: str = "sequential") -> "Engine":
        from ..engine import Pipeline

        return cls(Pipeline.from_pretrained(model, device=device, dtype=DTYPES[dtype], seed=seed, quiet=True,
                                            layout=tpp or "1", precision=precision,
                                            decoder=decoder, kv_cache_dtype=kv_cache_dtype,
                                            compile=compile, schedule=schedule))

    @property
    def capacity_limit(self) -> int | None:
        return self.pipe.max_sessions

    def open(self, image, prompt: str | None = None, seed: int = 0):
        """A streaming session (blocking: encodes the image and prefills, ~2 s for tiny on CPU)."""
        with torch.no_grad():
            return self.pipe.session(image, prompt=prompt, seed=seed)

    def warmup(self) -> float:
        """Render one block on a grey image, so the first client's time to first frame does not
        include one-time costs (kernel selection, allocator growth). Returns the seconds spent."""
        t0 = time.perf_counter()
        side = max(64, int(self.pipe.max_area ** 0.5) // 64 * 64)  # the usual output size (128 for tiny)
        sess = self.open(np.full((side, side, 3), 127, np.uint8))
        try:
            sess.push_audio(np.zeros(self.block_frames * self.audio_rate // self.fps + 160, np.float32),
                            self.audio_rate)
            with torch.no_grad():
                next(iter(sess.frames(timeout=600)))
        finally:
            sess.close()
        return time.perf_counter() - t0

    def close(self) -> None:
        try:
            self.pipe.close()
        except Exception as e:  # shutting down: report, do not mask the caller's exit
            print(f"liveavatar-rt serve: closing the TPP ring failed: {e!r}", file=sys.stderr)
