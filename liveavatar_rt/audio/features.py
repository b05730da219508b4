"""The tiny model's audio features: a streaming log-mel stand-in for wav2vec2's 25 layers.

Frame i (50 Hz at hop 320) covers 16 kHz samples [i*hop, i*hop + win): periodic Hann window,
zero-padded to n_fft, power spectrum, HTK-mel triangles (area-normalised), log(mel + 1e-6),
then per-band fixed normalisation (x - mu_b) / 4, where mu_b is the band's log-mel for white
noise at -30 dBFS RMS (computed analytically), so digital silence is ~ -2.1 and loud audio ~ +1.5 (O(1) values).
Frame count for n samples is (n - win) // hop + 1 (0 if n < win): wav2vec2's convention (its
conv stack has a 400-sample receptive field and stride 320), no padding at either end.

Layers: layer 0 is the normalised log-mel; layer l >= 1 is a causal EMA of it,
y[t] = a_l * y[t-1] + (1 - a_l) * x[t], y[0] = x[0], a_l = exp(-1 / tau_l),
tau_l = 2 ** ((l - 1) / 3) frames: 20 ms (l = 1) ... ~4 s (l = 24) - a bank of increasingly
slow envelopes, as wav2vec2's deeper layers carry longer context.

Causality: frame i depends only on samples < i*hop + win, i.e. a lookahead of win - hop = 80
samples (5 ms) past the end of its hop interval. Every frame is computed by the same
fixed-shape per-frame code (no batch-size-dependent BLAS/FFT paths), so streaming output equals
one-shot output bit for bit for any chunking.
"""
from __future__ import annotations

import math

import numpy as np

from ..config import AUDIO_RATE

REF_DBFS = -30.0  # white-noise level that maps to 0 after normalisation
LOG_SCALE = 4.0  # log units per normalised unit
EPS = 1e-6


def _hz_to_mel(f):
    return 2595.0 * np.log10(1.0 + np.asarray(f, np.float64) / 700.0)


def _mel_to_hz(m):
    return 700.0 * (10.0 ** (np.asarray(m, np.float64) / 2595.0) - 1.0)


def mel_filterbank(n_mels: int, n_fft: int, sample_rate: int, fmin: float = 0.0, fmax: float | None = None) -> np.ndarray:
    """Triangular HTK-mel filters, area-normalised (2 / bandwidth): [n_fft // 2 + 1, n_mels] float64."""
    fmax = sample_rate / 2 if fmax is None else fmax
    freqs = np.arange(n_fft // 2 + 1) * sample_rate / n_fft
    edges = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    lo, mid, hi = edges[:-2], edges[1:-1], edges[2:]
    up = (freqs[:, None] - lo[None]) / (mid - lo)[None]
    down = (hi[None] - freqs[:, None]) / (hi - mid)[None]
    return np.clip(np.minimum(up, down), 0.0, None) * (2.0 / (hi - lo))[None]


class LogMelFeatures:
    """Log-mel + EMA layer bank. __call__(pcm16k [n] float) -> float32 [layers, n_mels, T50].

    Attributes used by AudioStream: sample_rate (Hz), hop (samples per frame, 50 Hz), win,
    layers, dim (= n_mels), lookahead_samples (= win - hop), stream().
    """

    def __init__(self, n_mels: int = 32, layers: int = 25, sample_rate: int = AUDIO_RATE, hop: int = 320, win: int = 400):
        if n_mels < 1 or layers < 1 or hop < 1 or win < hop:
            raise ValueError(f"bad LogMelFeatures sizes n_mels={n_mels} layers={layers} hop={hop} win={win}")
        self.n_mels, self.layers, self.sample_rate, self.hop, self.win = n_mels, layers, sample_rate, hop, win
        self.dim = n_mels
        # n_fft: at least the window, and enough bins that many mels are not all empty.
        self.n_fft = 1 << max(math.ceil(math.log2(win)), math.ceil(math.log2(2 * n_mels + 2)))
        self.window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)  # periodic Hann
        self.fb = mel_filterbank(n_mels, self.n_fft, sample_rate)
        # White noise of variance s2 has expected periodogram s2 * sum(w^2) in every bin.
        s2 = 10.0 ** (REF_DBFS / 10.0)
        ref_power = np.full(self.n_fft // 2 + 1, s2 * float(np.sum(self.window ** 2)))
        self.mu = np.log(ref_power @ self.fb + EPS)  # [n_mels]
        tau = 2.0 ** ((np.arange(1, layers) - 1) / 3.0)  # EMA time constants, frames
        self.taus = tau
        self._a = np.exp(-1.0 / tau)[:, None]  # [layers-1, 1]
        self._b = 1.0 - self._a

    @property
    def lookahead_samples(self) -> int:
        """Samples past the end of frame i's hop interval [i*hop, (i+1)*hop) that frame i needs."""
        return self.win - self.hop

    def n_frames(self, n_samples: int) -> int:
        return 0 if n_samples < self.win else (n_samples - self.win) // self.hop + 1

    def frame(self, seg: np.ndarray) -> np.ndarray:
        """One frame: seg [win] float32 -> normalised log-mel [n_mels] float64 (fixed shapes)."""
        spec = np.fft.rfft(seg.astype(np.float64) * self.window, n=self.n_fft)
        power = spec.real * spec.real + spec.imag * spec.imag
        return (np.log(power @ self.fb + EPS) - self.mu) / LOG_SCALE

    def stream(self) -> "LogMelStream":
        return LogMelStream(self)

    def __call__(self, pcm16k) -> np.ndarray:
        """One-shot: float32 [layers, n_mels, n_frames(len(pcm16k))]; equals any streamed chunking."""
        s = self.stream()
        return np.concatenate([s.push(pcm16k), s.flush()], axis=2)


class LogMelStream:
    """Stateful LogMelFeatures: push(pcm16k [n]) -> new frames [layers, n_mels, t] float32.
    State: < win + chunk samples, the EMA state [layers - 1, n_mels], a frame counter."""

    def __init__(self, fx: LogMelFeatures):
        self.fx = fx
        self._buf = np.zeros(0, np.float32)  # samples from the next frame's start on
        self._ema: np.ndarray | None = None
        self.frames_out = 0
        self._ended = False

    @property
    def state_samples(self) -> int:
        return int(self._buf.size)

    def push(self, pcm16k) -> np.ndarray:
        if self._ended:
            raise RuntimeError("LogMelStream.push() after flush(): the stream has ended")
        fx = self.fx
        x = np.asarray(pcm16k, dtype=np.float32).reshape(-1)
        buf = np.concatenate([self._buf, x]) if x.size else self._buf
        t = fx.n_frames(buf.size)
        out = np.empty((fx.layers, fx.n_mels, t), np.float32)
        for i in range(t):
            mel = fx.frame(buf[i * fx.hop:i * fx.hop + fx.win])
            # y[0] = x[0]: no start-up transient towards an arbitrary initial value.
            self._ema = np.repeat(mel[None], fx.layers - 1, 0) if self._ema is None else fx._a * self._ema + fx._b * mel
            out[0, :, i] = mel
            out[1:, :, i] = self._ema
        self._buf = buf[t * fx.hop:].copy() if t else buf
        self.frames_out += t
        return out

    def flush(self) -> np.ndarray:
        """End of audio. wav2vec2's convention has no partial frame at the end: returns no frames."""
        self._ended = True
        self._buf = np.zeros(0, np.float32)
        return np.zeros((self.fx.layers, self.fx.n_mels, 0), np.float32)
