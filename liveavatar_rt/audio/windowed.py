"""WindowedAudioStream: the 14B path's wav2vec2 features, streamed with a bounded lookahead.

wav2vec2 is bidirectional and its feature extractor normalises whatever it is given, so the
published pipeline runs it once over the complete utterance (offline.py). Here, block n's
features come from wav2vec2 run on a window of the most recent `window_s` seconds of audio
ending `lookahead_s` after block n's last sample (or at the end of the audio, if that comes
first). The feature extractor's normalisation applies to that window (`normalize="window"`) or
uses the mean / variance of all audio from the stream start to the window's end
(`normalize="running"`: causal statistics that approach the offline whole-utterance ones); the published
alignment (`align_offline`: 50 -> 30 Hz interpolation over the window, 25 fps bucketing) maps
the window's features to its video frames. The window starts on a video-frame boundary
(640 samples), so frame k of the window is frame start / 640 + k of the stream.

Properties (tests/audio/test_windowed.py):
- block n's features depend only on audio up to (n + 1) * 480 ms + lookahead_s;
- they are independent of how the audio was split into pushes (any rate: the resampler is
  chunking-invariant);
- a window covering the whole utterance (window_s and lookahead_s at least its length) gives
  the offline features bit for bit.
Block n is ready once the audio reaches its end + lookahead_s (or the audio ended). How far
the features are from the offline ones for a window length: `liveavatar-rt audio-check`.
Compute: one wav2vec2 pass over the window per block (a block's window is reused when
several blocks share it, e.g. after the end of the audio).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..config import AUDIO_RATE
from .align import align_offline
from .pcm import as_mono_float32, check_sample_rate
from .resample import StreamingResampler
from .stream import AudioNotReady, _TimeBuffer


@dataclass(frozen=True)
class AudioWindow:
    """A session's streaming wav2vec2 window: `window_s` seconds of audio per block's features,
    ending `lookahead_s` after the block. Defaults: see README "Streaming audio" (measured with
    `liveavatar-rt audio-check`)."""

    window_s: float = 2.0  # left context barely matters (README table); 2 s costs ~2/3 of 4 s
    lookahead_s: float = 0.16  # right context matters most; each 40 ms is added to every block's latency
    normalize: str = "window"  # "window" (the extractor on the window) or "running" (stream-start statistics)

    def __post_init__(self) -> None:
        if self.normalize not in ("window", "running"):
            raise ValueError(f"normalize must be 'window' or 'running', got {self.normalize!r}")

    def samples(self, block_samples: int, frame_samples: int) -> tuple[int, int]:
        """(window, lookahead) in 16 kHz samples; the window a whole number of video frames."""
        look = int(round(self.lookahead_s * AUDIO_RATE))
        win = -(-int(round(self.window_s * AUDIO_RATE)) // frame_samples) * frame_samples
        if look < 0:
            raise ValueError(f"lookahead_s must be >= 0, got {self.lookahead_s}")
        if win < block_samples + look:
            raise ValueError(f"window_s {self.window_s} s must cover a block ({block_samples / AUDIO_RATE:.2f} s) "
                             f"plus lookahead_s ({self.lookahead_s} s)")
        return win, look


class WindowedAudioStream:
    """The AudioStream interface (push, end, lead_in, blocks_ready, block_features, block_pcm,
    release) over windowed wav2vec2 features.

    features: callable pcm16k [n] -> [layers, dim, T50] (e.g. Wav2VecFeatures);
    block_features(n): float32 [layers, dim, video_frames_per_block]."""

    def __init__(self, features, window: AudioWindow = AudioWindow(), video_frames_per_block: int = 12,
                 fps: int = 25, blocks_per_clip: int = 4):
        self.features, self.fps, self.video_frames_per_block = features, fps, video_frames_per_block
        self.batch_frames = video_frames_per_block * blocks_per_clip  # the offline clip rounding
        self.samples_per_frame = AUDIO_RATE // fps  # 640
        self.block_samples = self.samples_per_frame * video_frames_per_block  # 7680 = 480 ms
        self.window = window
        self.window_samples, self.lookahead_samples = window.samples(self.block_samples, self.samples_per_frame)
        self._pcm = _TimeBuffer((), 2 * self.window_samples)
        self._rs: StreamingResampler | None = None
        self.sample_rate_in: int | None = None
        self._cached: tuple[tuple[int, int], torch.Tensor] | None = None  # (start, end) -> frames
        self._released = 0
        self.ended = False
        self.total_blocks: int | None = None  # known after end()
        self.feature_seconds = 0.0  # wav2vec2 time spent (for the latency bench)
        # running statistics (normalize="running"): sums over [0, _acc_end) in float64, and the
        # stats already asked for by window end (a block may re-read its window's stats)
        self._acc_end, self._acc_sum, self._acc_sq = 0, 0.0, 0.0
        self._stats: dict[int, tuple[float, float]] = {}

    # ---- input ---------------------------------------------------------------------------
    def lead_in(self, samples: int) -> None:
        """Start the stream with `samples` of 16 kHz silence (the session's stream-start padding)."""
        if self._pcm.end or self.ended:
            raise RuntimeError("lead_in() must come before any audio is pushed")
        if samples < 0:
            raise ValueError(f"lead_in samples must be >= 0, got {samples}")
        self._pcm.append(np.zeros(int(samples), np.float32))

    def push(self, pcm, sample_rate) -> None:
        if self.ended:
            raise RuntimeError("audio pushed after end(): the stream has ended")
        sr = check_sample_rate(sample_rate)
        if self.sample_rate_in is not None and sr != self.sample_rate_in:
            raise ValueError(f"sample rate changed mid-stream from {self.sample_rate_in} Hz to {sr} Hz")
        x = as_mono_float32(pcm, sr)
        if self._rs is None:
            self.sample_rate_in, self._rs = sr, StreamingResampler(sr, AUDIO_RATE)
        self._pcm.append(self._rs.push(x))

    def end(self) -> None:
        """No more audio: total_blocks = ceil(ceil(n16k / 640) / 12), as AudioStream."""
        if self.ended:
            return
        if self._rs is not None:
            self._pcm.append(self._rs.flush())
        if self._pcm.end == 0:
            raise ValueError("end() without any audio: nothing to generate")
        n_video = -(-self._pcm.end // self.samples_per_frame)
        self.total_blocks = -(-n_video // self.video_frames_per_block)
        self.ended = True

    # ---- output --------------------------------------------------------------------------
    def blocks_ready(self) -> int:
        if self.ended:
            return self.total_blocks
        return max(0, (self._pcm.end - self.lookahead_samples) // self.block_samples)

    def _span(self, n: int) -> tuple[int, int]:
        """Block n's window [start, end) in stream samples; start on a video-frame boundary."""
        end = (n + 1) * self.block_samples + self.lookahead_samples
        if self.ended:
            end = min(end, self._pcm.end)
        start = max(0, end - self.window_samples) // self.samples_per_frame * self.samples_per_frame
        return start, end

    def _check(self, n: int, what: str) -> None:
        if n < 0:
            raise ValueError(f"block index must be >= 0, got {n}")
        if n < self._released:
            raise AudioNotReady(f"block {n} {what} was released")
        if n >= self.blocks_ready():
            if self.ended:
                raise AudioNotReady(f"block {n} is outside the {self.total_blocks} blocks of this audio")
            need = ((n + 1) * self.block_samples + self.lookahead_samples) / AUDIO_RATE
            raise AudioNotReady(f"block {n} {what} is not available yet: it needs audio up to {need:.3f} s "
                                f"(block end + lookahead), {self._pcm.end / AUDIO_RATE:.3f} s received")

    def block_features(self, n: int) -> torch.Tensor:
        """Features of block n: float32 [layers, dim, video_frames_per_block]; zeros past the end."""
        import time

        self._check(n, "features")
        start, end = self._span(n)
        if self._cached is None or self._cached[0] != (start, end):
            t = time.perf_counter()
            if self.window.normalize == "running":
                feat = self.features(self._pcm.read(start, end), stats=self._running_stats(end))
            else:
                feat = self.features(self._pcm.read(start, end))  # [L, D, T50] of the window
            frames = align_offline(feat, self.fps, self.batch_frames).float()  # [L, D, n_video]
            self.feature_seconds += time.perf_counter() - t
            self._cached = ((start, end), frames)
        frames = self._cached[1]
        f = self.video_frames_per_block
        k0 = n * f - start // self.samples_per_frame
        out = torch.zeros(frames.shape[0], frames.shape[1], f)
        have = max(0, min(f, frames.shape[2] - k0))
        out[:, :, :have] = frames[:, :, k0:k0 + have]
        return out

    def _running_stats(self, end: int) -> tuple[float, float]:
        """(mean, variance) of stream samples [0, end). Windows are asked for in order, and
        release() keeps everything from the previous window's end, so the sums advance."""
        if end not in self._stats:
            if end < self._acc_end:
                raise RuntimeError(f"running statistics up to {end} asked for after {self._acc_end}")
            x = self._pcm.read(self._acc_end, end).astype(np.float64)
            self._acc_sum += float(x.sum())
            self._acc_sq += float((x * x).sum())
            self._acc_end = end
            mean = self._acc_sum / end
            self._stats = {k: v for k, v in self._stats.items() if k > end - 4 * self.block_samples}
            self._stats[end] = (mean, max(self._acc_sq / end - mean * mean, 0.0))
        return self._stats[end]

    def block_pcm(self, n: int) -> np.ndarray:
        """16 kHz float32 PCM of block n; zeros past the end."""
        self._check(n, "PCM")
        return self._pcm.read(n * self.block_samples, (n + 1) * self.block_samples)

    def release(self, n: int) -> None:
        """Block n was used: drop the audio no later block's window or PCM reads."""
        self._released = max(self._released, n + 1)
        nxt = self._released
        end = min((nxt + 1) * self.block_samples + self.lookahead_samples, self._pcm.end)
        keep = min(max(0, end - self.window_samples) // self.samples_per_frame * self.samples_per_frame,
                   nxt * self.block_samples)
        self._pcm.drop_before(keep)
