"""Streaming rational resampler (polyphase Kaiser-windowed sinc, numpy).

Ratio out/in = up/down in lowest terms. Output sample m sits at input position
P = m * down / up = n0 + f / up (n0 = floor, phase f in [0, up)); it is the dot product of the
fixed input window x[n0 - J .. n0 + J + 1] (K = 2J + 2 taps, J = ceil(half-width)) with the
taps of phase f. Each output is computed exactly once, from that window, only once the window is
in the buffer (flush() zero-pads the tail; the stream starts from zero history), and with
elementwise numpy ops only (no BLAS / pairwise reductions whose rounding could depend on how
many outputs are batched). Hence push()/flush() outputs, concatenated, are bit-identical for
any chunking, including empty and 1-sample chunks.

Filter: cutoff 0.475 * min(in, out) Hz, Kaiser beta 8.6 (~87 dB stopband), half-width 64
samples of the lower rate (a 128-sample span at min rate: K = 356 taps at 44.1k -> 16k).
Transition ~0.043 * min rate centred on the cutoff: flat to 0.45 * min(rate), stopband from
~0.497 * min(rate). Taps of each phase are normalised to a DC gain of exactly 1.
Lookahead: J + 2 input samples past an output's position, i.e. 64 / min(rate) s + 2 samples:
~4 ms for 44.1 / 48 kHz -> 16 kHz, ~8 ms for 8 kHz -> 16 kHz.
Cost: ~0.09 s of CPU per second of 44.1 kHz audio. Unusual rates (up > ~5900, e.g. 44101 Hz)
compute taps on the fly instead of tabulating them: ~1 s of CPU per second of audio.
"""
from __future__ import annotations

import math

import numpy as np

from ..config import AUDIO_RATE
from .pcm import check_sample_rate

CUTOFF = 0.475  # fraction of min(rate)
BETA = 8.6  # Kaiser beta: ~87 dB stopband attenuation
HALF_WIDTH = 64  # filter half-width in samples of the lower rate
_TABLE_LIMIT = 1 << 21  # tabulate all phases up to this many taps (16 MB float64)
_PIECE = 4096  # outputs computed per vector pass (bounds temporary memory)


def _colsum(a: np.ndarray) -> np.ndarray:
    """Sum a [K, M] array over K in a fixed top-to-bottom order (elementwise adds only), so a
    column's result never depends on M or memory layout, unlike np.sum's blocked pairwise sum."""
    acc = a[0].copy()
    for k in range(1, a.shape[0]):
        acc += a[k]
    return acc


class StreamingResampler:
    """Resample float32 mono PCM from `in_rate` to `out_rate` (Hz) chunk by chunk.

    push(chunk [n] float) -> float32 [m] new outputs; flush() -> the remaining outputs (the
    tail zero-padded); total output length = ceil(n_in * out_rate / in_rate). Identity (a copy)
    when the rates are equal. State: the input samples still needed (<= K + chunk) + counters.
    """

    def __init__(self, in_rate: int, out_rate: int = AUDIO_RATE):
        self.in_rate, self.out_rate = check_sample_rate(in_rate), check_sample_rate(out_rate)
        g = math.gcd(self.in_rate, self.out_rate)
        self.up, self.down = self.out_rate // g, self.in_rate // g
        self.identity = self.up == self.down
        lo = min(self.in_rate, self.out_rate)
        self._c = 2.0 * CUTOFF * lo / self.in_rate  # cutoff in cycles per 2 input samples
        self._w = HALF_WIDTH * self.in_rate / lo  # half-width in input samples
        self.J = math.ceil(self._w)
        self.K = 2 * self.J + 2
        self._table = self._taps(np.arange(self.up)) if self.up * self.K <= _TABLE_LIMIT else None
        # Zero history: the buffer starts at absolute input index -J.
        self._buf = np.zeros(self.J, np.float32)
        self._buf_start = -self.J
        self._n_in = 0  # input samples received
        self._m = 0  # next output index
        self._flushed = False

    @property
    def lookahead_samples(self) -> int:
        """Input samples past an output's position needed before it can be computed."""
        return 0 if self.identity else self.J + 2

    @property
    def state_samples(self) -> int:
        """Input samples currently buffered (bounded by K + the last chunk)."""
        return int(self._buf.size)

    def _taps(self, phases: np.ndarray) -> np.ndarray:
        """Taps [K, len(phases)] float64 for integer phases f in [0, up): tap j (0-based) weighs
        x[n0 - J + j] at distance d = f/up - (j - J) input samples."""
        d = phases[None, :] / self.up - (np.arange(self.K) - self.J)[:, None]
        r = np.clip(1.0 - (d / self._w) ** 2, 0.0, None)
        h = self._c * np.sinc(self._c * d) * np.i0(BETA * np.sqrt(r)) / np.i0(BETA)
        h[np.abs(d) >= self._w] = 0.0
        return h / _colsum(h)[None, :]

    def _compute(self, m_end: int) -> np.ndarray:
        """Outputs [self._m, m_end) from the buffer (their windows must be present)."""
        out = []
        offs = np.arange(self.K)
        for a in range(self._m, m_end, _PIECE):
            m = np.arange(a, min(a + _PIECE, m_end), dtype=np.int64)
            pos = m * self.down
            n0, f = pos // self.up, pos % self.up
            taps = self._table[:, f] if self._table is not None else self._taps(f)
            win = self._buf[offs[:, None] + (n0 - self.J - self._buf_start)[None, :]]  # [K, M]
            out.append(_colsum(taps * win).astype(np.float32))
        self._m = m_end
        # Drop input no later output needs: output m_end starts at floor(m_end*down/up) - J.
        keep = (m_end * self.down) // self.up - self.J
        if keep > self._buf_start:
            self._buf = self._buf[keep - self._buf_start:].copy()
            self._buf_start = keep
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    def push(self, chunk) -> np.ndarray:
        """Add input samples ([n] float, n may be 0); returns the outputs now computable."""
        if self._flushed:
            raise RuntimeError("StreamingResampler.push() after flush(): the stream has ended")
        x = np.asarray(chunk, dtype=np.float32).reshape(-1)
        self._n_in += x.size
        if self.identity:
            return x.copy()
        if x.size:
            self._buf = np.concatenate([self._buf, x])
        # Output m needs x up to n0 + J + 1 <= n_in - 1, i.e. m*down < (n_in - J - 1)*up.
        avail = self._n_in - self.J - 1
        m_end = max(self._m, -(-(avail * self.up) // self.down)) if avail > 0 else self._m
        return self._compute(m_end)

    def flush(self) -> np.ndarray:
        """End of input: the remaining outputs, windows zero-padded past the last sample.
        Total outputs = ceil(n_in * up / down). A second flush() returns nothing."""
        if self._flushed or self.identity:
            self._flushed = True
            return np.zeros(0, np.float32)
        self._flushed = True
        self._buf = np.concatenate([self._buf, np.zeros(self.K, np.float32)])
        m_total = -(-(self._n_in * self.up) // self.down)
        return self._compute(max(self._m, m_total))


def resample(x, in_rate: int, out_rate: int = AUDIO_RATE) -> np.ndarray:
    """One-shot resampling of mono PCM [n] -> float32 [ceil(n * out_rate / in_rate)];
    identical to StreamingResampler push(x) + flush()."""
    rs = StreamingResampler(in_rate, out_rate)
    return np.concatenate([rs.push(x), rs.flush()])
