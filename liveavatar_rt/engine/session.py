"""A streaming session: one reference image + an audio stream -> blocks of video frames.

    sess = pipe.session(image, seed=0)
    sess.push_audio(pcm, sample_rate)          # any thread, any chunk size
    for block in sess.frames():                # yields as soon as a block's audio is there
        block.video, block.audio, block.index, block.timings
    sess.end_audio(); sess.close()

The session owns every rule the published model fixes: the audio stream, the noise of each
clip, the sink-replacement schedule, the stream start, the PCM cut per block and the lifecycle.
It hands each block to the pipeline's block executor as plain data (executor.py): one process
(`LocalExecutor`) or a TPP ring (`parallel.front.RingExecutor`) computes it. Per session (never
shared): the executor's step caches and decoder state, the audio buffers, the noise of the
current clip. The pipeline holds only weights and the read-only per-image conditioning
(conditioning.py), so a session that fails leaves the process and other sessions untouched.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch

from .executor import BlockJob, BlockResult, SessionSpec
from .positions import PositionPolicy


@dataclass
class Block:
    index: int
    video: np.ndarray  # uint8 [n, H, W, 3]; n = 12 (9 for the very first block); n = 0 if decode=False
    audio: np.ndarray  # float32 PCM at the pipeline's audio rate, exactly the span of `video`
    timings: dict = field(default_factory=dict)  # seconds per stage
    latent: torch.Tensor | None = None  # the clean block latent [1, 16, F, h, w] (compute dtype)


def clip_noise(seed: int, clip: int, frames: int, h: int, w: int, dtype: torch.dtype) -> torch.Tensor:
    """Published noise: one CPU draw per clip, [16, frames, h, w], seeded by seed + clip index."""
    return torch.randn(16, frames, h, w, dtype=dtype, generator=torch.Generator().manual_seed(seed + clip))


# Published: the first 3 decoded frames of a stream (and their audio) are dropped. Sessions pad
# the audio stream's start with this many frames of silence (lead_in), so the dropped frames
# show silence and every sample the user pushed reaches the output.
STREAM_START_DROP = 3


def drop_stream_start(frames: np.ndarray, pcm: np.ndarray, frames_per_block: int) -> tuple[np.ndarray, np.ndarray]:
    """Published: the first STREAM_START_DROP decoded frames of a stream (and their audio) are dropped."""
    drop = frames.shape[0] - (frames_per_block * 4 - STREAM_START_DROP)
    return frames[drop:], pcm[drop * len(pcm) // (frames_per_block * 4):]


class SessionClosed(RuntimeError):
    pass


class Session:
    """Open with `Pipeline.session(...)`; see the module docstring."""

    def __init__(self, pipe, image, text: torch.Tensor, seed: int = 0, sink_replacement: bool = True,
                 positions: PositionPolicy | None = None, sink_offset: int | None = None, decode: bool = True,
                 lead_in: bool = True, audio_window=None):
        from ..io.image import load_image, output_size, prepare_reference

        t0 = time.perf_counter()
        self.pipe, self.seed, self.decode = pipe, seed, decode
        stream, dtype = pipe.stream, pipe.dtype
        self.sink_replacement = sink_replacement
        img = load_image(image)
        self.height, self.width = output_size(img.shape[:2], pipe.max_area)
        ref = prepare_reference(img, (self.height, self.width))  # [3, H, W] in [-1, 1]
        # Published multi-GPU conditioning: the reference latent is the image alone, the motion
        # latents encode the image repeated `motion_frames` times (73 -> 19 latent frames), and
        # the streaming decoder starts warmed on the first 7 motion latents. Cached per image.
        cond = pipe.conditioning_cache.get(pipe.vae, ref, stream.motion_frames, dtype, decoder=pipe.decoder)
        self.ref_latent, self.motion = cond.ref_latent, cond.motion
        spec = SessionSpec(seed=seed, height=self.height, width=self.width, text=text.to(dtype),
                           ref_latent=self.ref_latent, motion=self.motion, positions=positions or PositionPolicy(),
                           sink_offset=sink_offset, decode=decode, cond=cond)
        self._cv = threading.Condition()
        self.executor = pipe._executor(spec, self._wake)
        self.audio = pipe.new_audio_stream(lead_in, audio_window)
        # produced frame j shows input frame j + input_offset_frames (the published start skips 3)
        self.input_offset_frames = 0 if lead_in else STREAM_START_DROP
        self._submitted = 0  # blocks handed to the executor
        self._next = 0  # blocks handed to the caller
        self._submit_time: dict[int, float] = {}
        self._clip_noise: tuple[int, torch.Tensor] | None = None
        self._closed = False
        self.error: BaseException | None = None
        self.setup_seconds = time.perf_counter() - t0

    @property
    def stats(self) -> dict:
        """The executor's counters (the ring's per-session timings; {} in one process)."""
        return getattr(self.executor, "stats", {})

    def _wake(self) -> None:
        """Called by an executor from another thread when a result (or its failure) is ready."""
        with self._cv:
            self._cv.notify_all()

    # ---- audio in -----------------------------------------------------------------------
    def push_audio(self, pcm, sample_rate: int) -> None:
        """Append audio: numpy/torch, float or int16, mono [n] or multi-channel; any rate."""
        with self._cv:
            self._check_open()
            self.audio.push(pcm, sample_rate)
            self._cv.notify_all()

    def end_audio(self) -> None:
        """No more audio: the last partial block is padded with silence and then the stream ends."""
        with self._cv:
            self._check_open()
            self.audio.end()
            self._cv.notify_all()

    # ---- video out ----------------------------------------------------------------------
    def frames(self, timeout: float | None = None) -> Iterator[Block]:
        """Yield blocks in order as their audio arrives; returns after the last block once
        `end_audio()` was called. Waits for audio pushed from another thread (`timeout`
        seconds at most per wait; TimeoutError after that). Blocks are submitted to the
        executor as soon as their audio is there, up to its depth ahead of the caller."""
        while True:
            with self._cv:
                self._check_open()
                ready = self._cv.wait_for(lambda: self._closed or self.executor.ready() or self._can_submit()
                                          or self._finished(), timeout)
                if not ready:
                    raise TimeoutError(f"no audio for block {self._next} within {timeout} s")
                self._check_open()
                if self._finished():
                    self.executor.end()
                    return
                job = self._job(self._submitted) if self._can_submit() else None
            try:
                if job is not None:
                    self._submit_time[job.index] = time.perf_counter()
                    self.executor.submit(job)
                    self._submitted += 1
                    continue
                block = self._block(self.executor.take())
            except BaseException as exc:
                self.error = exc
                self.close()
                raise
            self._next += 1
            yield block

    def _finished(self) -> bool:
        return self.audio.ended and self._next >= self.audio.total_blocks

    def _can_submit(self) -> bool:
        return (self._submitted < self.audio.blocks_ready()
                and self._submitted - self._next < self.executor.depth)

    def _noise(self, n: int) -> torch.Tensor:
        """Published noise: one draw per clip, [16, 4*F, h, w], seeded by seed + clip index."""
        s = self.pipe.stream
        clip, k = divmod(n, s.blocks_per_clip)
        if self._clip_noise is None or self._clip_noise[0] != clip:
            h, w = self.ref_latent.shape[-2:]
            self._clip_noise = (clip, clip_noise(self.seed, clip, s.frames_per_block * s.blocks_per_clip, h, w, self.pipe.dtype))
        F = s.frames_per_block
        return self._clip_noise[1][None, :, k * F:(k + 1) * F]

    def _job(self, n: int) -> BlockJob:
        """Block n as data (under the lock: reads the audio stream)."""
        # Published multi-GPU sink replacement: after the first clip, the first generated latent
        # frame (of block 0) becomes the reference and the conditioning prefill is re-run.
        bpc = self.pipe.stream.blocks_per_clip
        return BlockJob(n, self._noise(n), self.audio.block_features(n)[None],
                        keep_sink=self.sink_replacement and n == 0,
                        resink=self.sink_replacement and n == bpc)

    def _block(self, r: BlockResult) -> Block:
        s = self.pipe.stream
        n = r.index
        if n != self._next:
            raise RuntimeError(f"the executor returned block {n}, expected block {self._next}")
        frames = r.frames.numpy() if r.frames is not None else None
        if frames is None:  # a zero-cost stand-in of the decoded shape, so the audio span is cut the same way
            frames = np.broadcast_to(np.zeros((1, 1, 1, 3), np.uint8), (4 * s.frames_per_block, self.height, self.width, 3))
        with self._cv:
            pcm = self.audio.block_pcm(n)
            self.audio.release(n)
        if n == 0:
            frames, pcm = drop_stream_start(frames, pcm, s.frames_per_block)
        if r.frames is None:
            frames = frames[:0]
        timings = dict(r.timings, total=time.perf_counter() - self._submit_time.pop(n))
        return Block(n, np.ascontiguousarray(frames), pcm, timings, r.latent)

    # ---- lifecycle ----------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise SessionClosed("session is closed" + (f" after an error: {self.error!r}" if self.error else ""))

    def close(self) -> None:
        """End the session (cancelling blocks still in flight) and free its caches."""
        with self._cv:
            if self._closed:
                return
            self._closed = True
            self._cv.notify_all()
        self.executor.close()

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
