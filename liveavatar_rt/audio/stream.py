"""AudioStream: PCM of any rate/format in, per-block audio features + the matching 16 kHz PCM out.

Pipeline per push: validate (pcm.py) -> StreamingResampler to the extractor's rate (16 kHz)
-> feature stream (50 Hz) -> StreamingAligner (25 fps) -> block buffer of `video_frames_per_block`
(12) video frames. Every stage is chunking-invariant bit for bit, so the block features and
block PCM do not depend on how the audio was split into pushes.

Latency (LogMelFeatures, 16 kHz input): block n is ready once the audio reaches the end of the
block, (n + 1) * 480 ms, plus at most 5 ms (80 samples) of feature+alignment lookahead; a
non-16 kHz input adds the resampler's lookahead (64 samples of the lower rate + 2 input
samples: ~4 ms for 44.1 / 48 kHz, ~8 ms for 8 kHz).

Length (published): frames past the end of the audio are zero; the generation length is the
audio length in video frames, ceil(n16k / 640), rounded up to whole blocks (`total_blocks`),
or to whole clips (`total_blocks_for_clips`). Blocks past the end read as zeros.
Memory: call release(n) once block n is used; buffers then hold O(one block + one push).
"""
from __future__ import annotations

import numpy as np
import torch

from .align import FEAT_RATE, StreamingAligner, published_num_clips
from .pcm import as_mono_float32, check_sample_rate
from .resample import StreamingResampler


class AudioNotReady(RuntimeError):
    """Block data was requested before enough audio arrived (or after it was released)."""


class _TimeBuffer:
    """Append-only buffer along the last axis, indexed by absolute position, with O(1)
    amortised append and drop_before(); reads past the written end need `pad` (zeros)."""

    def __init__(self, shape: tuple[int, ...], capacity: int):
        self._data = np.zeros(shape + (capacity,), np.float32)
        self._lo = self._hi = 0  # valid region of _data
        self.base = 0  # absolute index of _data[..., _lo]
        self.end = 0  # absolute index one past the last written element

    def __len__(self) -> int:
        return self._hi - self._lo

    def append(self, x: np.ndarray) -> None:
        n = x.shape[-1]
        if self._hi + n > self._data.shape[-1]:
            size = self._hi - self._lo
            cap = max(self._data.shape[-1], 2 * (size + n))
            data = np.zeros(self._data.shape[:-1] + (cap,), np.float32)
            data[..., :size] = self._data[..., self._lo:self._hi]
            self._data, self._lo, self._hi = data, 0, size
        self._data[..., self._hi:self._hi + n] = x
        self._hi += n
        self.end += n

    def drop_before(self, pos: int) -> None:
        k = min(max(pos - self.base, 0), len(self))
        self._lo += k
        self.base += k

    def read(self, a: int, b: int) -> np.ndarray:
        """Copy of [a, b); positions >= end read as zeros (the caller checks availability)."""
        if a < self.base:
            raise AudioNotReady(f"positions [{a}, {b}) were already released (buffer starts at {self.base})")
        out = np.zeros(self._data.shape[:-1] + (b - a,), np.float32)
        hi = min(b, self.end)
        if hi > a:
            out[..., :hi - a] = self._data[..., self._lo + a - self.base:self._lo + hi - self.base]
        return out


class AudioStream:
    """Streaming audio front end of a session.

    AudioStream(sample_rate_in, feature_extractor, video_frames_per_block=12, fps=25); the form
    AudioStream(feature_extractor, ...) is accepted too (the first push then fixes the rate).
    feature_extractor: e.g. LogMelFeatures(); needs sample_rate, hop (rate / 50), layers,
    dim and stream(). block_features(n): torch float32 [layers, dim, video_frames_per_block].
    video_frames_per_block counts video frames (12), not StreamConfig.frames_per_block's latent
    frames (3): it is 4 * StreamConfig.frames_per_block.
    """

    def __init__(self, sample_rate_in=None, feature_extractor=None, video_frames_per_block: int = 12,
                 fps: int = 25):
        if feature_extractor is None and hasattr(sample_rate_in, "stream"):
            sample_rate_in, feature_extractor = None, sample_rate_in
        if feature_extractor is None:
            from .features import LogMelFeatures
            feature_extractor = LogMelFeatures()
        fx = feature_extractor
        if not callable(getattr(fx, "stream", None)):
            raise TypeError(f"{type(fx).__name__} has no stream(): AudioStream needs a streaming feature extractor")
        self.rate = int(fx.sample_rate)
        if self.rate != FEAT_RATE * fx.hop or self.rate % fps:
            raise ValueError(f"extractor rate {self.rate} Hz / hop {fx.hop} must give 50 Hz features and a "
                             f"whole number of samples per video frame at {fps} fps")
        self.sample_rate_in = None if sample_rate_in is None else check_sample_rate(sample_rate_in)
        self.fx, self.fps, self.video_frames_per_block = fx, fps, video_frames_per_block
        self.samples_per_frame = self.rate // fps  # 640
        self.block_samples = self.samples_per_frame * video_frames_per_block  # 7680 = 480 ms
        self._rs = None if self.sample_rate_in is None else StreamingResampler(self.sample_rate_in, self.rate)
        self._feat = fx.stream()
        self._align = StreamingAligner(fps)
        self._pcm = _TimeBuffer((), 4 * self.block_samples)
        self._frames = _TimeBuffer((fx.layers, fx.dim), 4 * video_frames_per_block)
        self._released = 0  # blocks < this were released
        self.ended = False
        self.total_blocks: int | None = None  # known after end()

    # ---- input ---------------------------------------------------------------------------
    def push(self, pcm, sample_rate=None) -> None:
        """Append audio (numpy/torch, float/int16/int32, mono or multi-channel, see pcm.py).
        sample_rate (Hz) defaults to the stream's; it must stay the same for the whole stream."""
        if self.ended:
            raise RuntimeError("AudioStream.push() after end(): the stream has ended")
        sr = self.sample_rate_in if sample_rate is None else check_sample_rate(sample_rate)
        if sr is None:
            raise ValueError("sample_rate is required on the first push (the stream was opened without one)")
        if self.sample_rate_in is not None and sr != self.sample_rate_in:
            raise ValueError(f"sample rate changed mid-stream from {self.sample_rate_in} Hz to {sr} Hz: a stream "
                             "has one rate (resample before pushing, or open a new stream)")
        x = as_mono_float32(pcm, sr)
        if self._rs is None:
            self.sample_rate_in, self._rs = sr, StreamingResampler(sr, self.rate)
        self._ingest(self._rs.push(x))

    def lead_in(self, samples: int) -> None:
        """Start the stream with `samples` of silence at the extractor's rate (before any push):
        the session's stream-start padding (engine/session.py), so the frames the published
        rule drops show this silence and not the user's first words."""
        if self._pcm.end or self.ended:
            raise RuntimeError("lead_in() must come before any audio is pushed")
        if samples < 0:
            raise ValueError(f"lead_in samples must be >= 0, got {samples}")
        self._ingest(np.zeros(int(samples), np.float32))

    def _ingest(self, pcm16k: np.ndarray) -> None:
        self._pcm.append(pcm16k)
        self._frames.append(self._align.push(self._feat.push(pcm16k)))
        self._trim()

    def end(self) -> None:
        """No more audio: flush every stage; total_blocks = ceil(ceil(n16k / 640) / 12)."""
        if self.ended:
            return
        if self._rs is not None:
            self._ingest(self._rs.flush())
        self._frames.append(self._align.push(self._feat.flush()))
        n_video = -(-self._pcm.end // self.samples_per_frame)
        self.total_blocks = -(-n_video // self.video_frames_per_block)
        self.ended = True

    # ---- output --------------------------------------------------------------------------
    def blocks_ready(self) -> int:
        """Blocks (counted from 0, released ones included) whose features and PCM are final."""
        if self.ended:
            return self.total_blocks
        return min(self._frames.end // self.video_frames_per_block, self._pcm.end // self.block_samples)

    def _check(self, n: int, what: str) -> None:
        if n < 0:
            raise ValueError(f"block index must be >= 0, got {n}")
        if n < self._released:
            raise AudioNotReady(f"block {n} {what} was released (release({self._released - 1}) was called)")
        if not self.ended and n >= self.blocks_ready():
            ms = 1000 * self._pcm.end / self.rate
            raise AudioNotReady(f"block {n} {what} is not available yet: {self.blocks_ready()} block(s) ready, "
                                f"{ms:.0f} ms of audio received; block {n} needs audio up to "
                                f"~{1000 * (n + 1) * self.block_samples / self.rate:.0f} ms (+ lookahead) or end()")

    def block_features(self, n: int) -> torch.Tensor:
        """Features of block n: float32 [layers, dim, video_frames_per_block]; zeros past the end."""
        self._check(n, "features")
        f = self.video_frames_per_block
        return torch.from_numpy(self._frames.read(n * f, (n + 1) * f))

    def block_pcm(self, n: int) -> np.ndarray:
        """16 kHz float32 PCM [n*B, (n+1)*B), B = 640 * video_frames_per_block; zeros past the end."""
        self._check(n, "PCM")
        return self._pcm.read(n * self.block_samples, (n + 1) * self.block_samples)

    def total_blocks_for_clips(self, blocks_per_clip: int = 4) -> int:
        """Published generation length in blocks (after end()): int(T30 / (48 * 1.2)) + 1 clips
        for 4-block clips, T30 = int(T50 * 0.6) - whole clips, one extra silent clip when T30 is
        an exact multiple; never fewer blocks than total_blocks (the published count can drop
        a last <~ 30 ms of audio that spills into a new clip; we keep it)."""
        if not self.ended:
            raise RuntimeError("total_blocks_for_clips() is known only after end()")
        clips = published_num_clips(self._align.n_features, self.fps, blocks_per_clip * self.video_frames_per_block)
        clips = max(clips, -(-self.total_blocks // blocks_per_clip))
        return clips * blocks_per_clip

    # ---- memory --------------------------------------------------------------------------
    def release(self, n: int) -> None:
        """Block n (and all before it) was consumed: drop its features and PCM."""
        self._released = max(self._released, n + 1)
        self._trim()

    def _trim(self) -> None:
        self._pcm.drop_before(self._released * self.block_samples)
        self._frames.drop_before(self._released * self.video_frames_per_block)

    def buffered(self) -> dict[str, int]:
        """Sizes of every internal buffer (samples / frames / features), for monitoring."""
        return {"pcm16k": len(self._pcm), "frames": len(self._frames),
                "resampler": 0 if self._rs is None else self._rs.state_samples,
                "feature_stream": getattr(self._feat, "state_samples", 0),
                "aligner": self._align.state_features}
