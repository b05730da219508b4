"""OfflineAudioStream: the published 14B audio path behind the AudioStream interface.

wav2vec2 is bidirectional and its feature extractor normalises the whole utterance, so the
published pipeline computes features once over the complete audio (`align_offline`, length
rounded up to whole clips). This stream therefore buffers PCM until `end()` and only then
makes blocks available: exact published numerics, no streaming latency benefit. (A windowed,
causal wav2vec2 front end is the way to stream the 14B model; it changes the numerics.)
"""
from __future__ import annotations

import numpy as np
import torch

from ..config import AUDIO_RATE
from .align import align_offline
from .pcm import as_mono_float32
from .resample import resample
from .stream import AudioNotReady


class OfflineAudioStream:
    def __init__(self, features, video_frames_per_block: int = 12, fps: int = 25, blocks_per_clip: int = 4):
        """features: callable pcm16k [n] -> [layers, dim, T50] (e.g. Wav2VecFeatures).
        video_frames_per_block: video frames per block (12 = 4 * StreamConfig.frames_per_block)."""
        self.features, self.video_frames_per_block, self.fps = features, video_frames_per_block, fps
        self.batch_frames = video_frames_per_block * blocks_per_clip
        self.samples_per_frame = AUDIO_RATE // fps
        self._chunks: list[np.ndarray] = []
        self._rate: int | None = None
        self._feat: torch.Tensor | None = None
        self._pcm: np.ndarray | None = None
        self._lead = 0
        self.ended = False
        self.total_blocks = 0

    def lead_in(self, samples: int) -> None:
        """Silence (16 kHz samples) put before the audio at end(): the session's stream-start
        padding, as AudioStream.lead_in."""
        if self._chunks or self.ended:
            raise RuntimeError("lead_in() must come before any audio is pushed")
        if samples < 0:
            raise ValueError(f"lead_in samples must be >= 0, got {samples}")
        self._lead = int(samples)

    def push(self, pcm, sample_rate) -> None:
        if self.ended:
            raise RuntimeError("audio pushed after end()")
        x = as_mono_float32(pcm, sample_rate)
        if self._rate is not None and int(sample_rate) != self._rate:
            raise ValueError(f"sample rate changed mid-stream: {self._rate} -> {sample_rate}")
        self._rate = int(sample_rate)
        self._chunks.append(x)

    def end(self) -> None:
        if self.ended:
            return
        if not self._chunks:
            raise ValueError("end() without any audio: nothing to generate")
        pcm = np.concatenate(self._chunks)
        self._chunks = []
        pcm16 = resample(pcm, self._rate, AUDIO_RATE) if self._rate != AUDIO_RATE else pcm
        if self._lead:
            pcm16 = np.concatenate([np.zeros(self._lead, np.float32), pcm16.astype(np.float32, copy=False)])
        feat = align_offline(self.features(pcm16), self.fps, self.batch_frames)  # [L, D, n_video]
        self._feat = feat.float()
        n_video = feat.shape[2]
        self._pcm = np.zeros(n_video * self.samples_per_frame, np.float32)
        self._pcm[:min(len(pcm16), len(self._pcm))] = pcm16[:len(self._pcm)]
        self.total_blocks = n_video // self.video_frames_per_block
        self.ended = True

    def blocks_ready(self) -> int:
        return self.total_blocks if self.ended else 0

    def _check(self, n: int) -> None:
        if not self.ended:
            raise AudioNotReady(f"block {n}: the wav2vec2 path needs the complete audio (call end_audio())")
        if not 0 <= n < self.total_blocks:
            raise AudioNotReady(f"block {n} is outside the {self.total_blocks} blocks of this audio")

    def block_features(self, n: int) -> torch.Tensor:
        self._check(n)
        f = self.video_frames_per_block
        return self._feat[:, :, n * f:(n + 1) * f]

    def block_pcm(self, n: int) -> np.ndarray:
        self._check(n)
        s = self.video_frames_per_block * self.samples_per_frame
        return self._pcm[n * s:(n + 1) * s].copy()

    def release(self, n: int) -> None:
        """Nothing to trim: offline features cover the whole utterance by definition."""
