"""A streaming session: one reference image + an audio stream -> blocks of video frames.

    sess = pipe.session(image, seed=0)
    sess.push_audio(pcm, sample_rate)          # any thread, any chunk size
    for block in sess.frames():                # yields as soon as a block's audio is there
        block.video, block.audio, block.index, block.timings
    sess.end_audio(); sess.close()

Per session (never shared): the step caches and conditioning K/V, the VAE's streaming decoder
state, the audio buffers, the noise of the current clip. The pipeline holds only weights and
the read-only per-image conditioning (conditioning.py), so a session that fails leaves the
process and other sessions untouched.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch

from .positions import PositionPolicy, SinkOffsets
from .stepper import BlockStepper


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


def to_uint8(video: torch.Tensor) -> torch.Tensor:
    """Decoded video [3, T, H, W] in [-1, 1] -> uint8 frames [T, H, W, 3]."""
    return ((video.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0)


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
    def __init__(self, pipe, image, text: torch.Tensor, seed: int = 0, sink_replacement: bool = True,
                 positions: PositionPolicy | None = None, sink_offset: int | None = None, decode: bool = True,
                 lead_in: bool = True):
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
        cond = pipe.conditioning_cache.get(pipe.vae, ref, stream.motion_frames, dtype)
        self.ref_latent, self.motion = cond.ref_latent, cond.motion
        h, w = self.ref_latent.shape[-2:]
        self.stepper = BlockStepper(pipe.model, stream, (h, w), positions=positions,
                                    offsets=SinkOffsets(seed=seed, low=stream.sink_offset_range[0],
                                                        high=stream.sink_offset_range[1], fixed=sink_offset))
        self.stepper.set_text(text)
        self.stepper.prefill(self.ref_latent, self.motion)
        self.decoder = cond.new_decoder()
        self.audio = pipe.new_audio_stream(lead_in)
        # produced frame j shows input frame j + input_offset_frames (the published start skips 3)
        self.input_offset_frames = 0 if lead_in else STREAM_START_DROP
        self._cv = threading.Condition()
        self._next = 0
        self._clip_noise: tuple[int, torch.Tensor] | None = None
        self._first_block_latent: torch.Tensor | None = None
        self._closed = False
        self.error: BaseException | None = None
        self.setup_seconds = time.perf_counter() - t0

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
        seconds at most per wait; TimeoutError after that)."""
        while True:
            with self._cv:
                self._check_open()
                ready = self._cv.wait_for(lambda: self._closed or self.audio.blocks_ready() > self._next
                                          or self._finished(), timeout)
                if not ready:
                    raise TimeoutError(f"no audio for block {self._next} within {timeout} s")
                self._check_open()
                if self._finished():
                    return
                n = self._next
            try:
                block = self._generate(n)
            except BaseException as exc:
                self.error = exc
                self.close()
                raise
            self._next = n + 1
            yield block

    def _finished(self) -> bool:
        return self.audio.ended and self._next >= self.audio.total_blocks

    def _noise(self, n: int) -> torch.Tensor:
        """Published noise: one draw per clip, [16, 4*F, h, w], seeded by seed + clip index."""
        s = self.pipe.stream
        clip, k = divmod(n, s.blocks_per_clip)
        if self._clip_noise is None or self._clip_noise[0] != clip:
            h, w = self.ref_latent.shape[-2:]
            self._clip_noise = (clip, clip_noise(self.seed, clip, s.frames_per_block * s.blocks_per_clip, h, w, self.pipe.dtype))
        F = s.frames_per_block
        return self._clip_noise[1][None, :, k * F:(k + 1) * F]

    @torch.no_grad()
    def _generate(self, n: int) -> Block:
        s, timings = self.pipe.stream, {}
        t0 = time.perf_counter()
        if self.sink_replacement and n == s.blocks_per_clip and self._first_block_latent is not None:
            # Published multi-GPU sink replacement: after the first clip, the first generated
            # latent frame becomes the reference and the conditioning prefill is re-run.
            t = time.perf_counter()
            self.stepper.prefill(self._first_block_latent, self.motion)
            timings["sink_replacement"] = time.perf_counter() - t
        feats = self.audio.block_features(n)[None]
        latent = self.stepper.denoise(self._noise(n), n, feats, timings=timings)
        if n == 0:
            self._first_block_latent = latent[:, :, :1].clone()
        if self.decode:
            t = time.perf_counter()
            video = self.decoder.decode(latent[0].float())  # [3, 12, H, W] after the warm-up
            timings["vae_decode"] = time.perf_counter() - t
            frames = to_uint8(video).numpy()
        else:  # a zero-cost stand-in of the decoded shape, so the audio span is cut the same way
            frames = np.broadcast_to(np.zeros((1, 1, 1, 3), np.uint8),
                                     (4 * s.frames_per_block, self.height, self.width, 3))
        pcm = self.audio.block_pcm(n)
        if n == 0:
            frames, pcm = drop_stream_start(frames, pcm, s.frames_per_block)
        if not self.decode:
            frames = frames[:0]
        self.audio.release(n)
        timings["total"] = time.perf_counter() - t0
        return Block(n, np.ascontiguousarray(frames), pcm, timings, latent)

    # ---- lifecycle ----------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise SessionClosed("session is closed" + (f" after an error: {self.error!r}" if self.error else ""))

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self.stepper = None  # drop the caches now, not when the caller drops the session

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
