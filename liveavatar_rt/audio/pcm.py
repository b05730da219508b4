"""Input validation: any PCM a caller may hand us -> mono float32 in [-1, 1].

Accepted: numpy arrays or torch tensors; float (any width) or int16 / int32 (scaled by
1/32768 and 1/2147483648); mono `[n]`, or multi-channel `[n, ch]` / `[ch, n]` with ch <= 8
(channels are averaged). The channel axis is the shorter one (a tie, e.g. [2, 2], reads as
[n, ch]), so a multi-channel chunk with fewer than 9 samples per channel is ambiguous: push such
tiny chunks as mono [n]. Every rejection is a `ValueError` that names the problem.
"""
from __future__ import annotations

import numpy as np

MIN_RATE, MAX_RATE = 1000, 384000
MAX_CHANNELS = 8
_INT_SCALE = {np.dtype(np.int16): 1.0 / 32768.0, np.dtype(np.int32): 1.0 / 2147483648.0}


def check_sample_rate(sample_rate) -> int:
    """Validate a sample rate in Hz; returns it as int. Non-integer rates are rejected because
    the resampler's rational ratio (and bit-exact streaming) needs integers."""
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer, float, np.floating)):
        raise ValueError(f"sample_rate must be a number in Hz, got {type(sample_rate).__name__}")
    if sample_rate != sample_rate or int(sample_rate) != sample_rate:
        raise ValueError(f"sample_rate must be a whole number of Hz, got {sample_rate!r}")
    sr = int(sample_rate)
    if sr <= 0:
        raise ValueError(f"sample_rate must be positive, got {sr} Hz")
    if not MIN_RATE <= sr <= MAX_RATE:
        raise ValueError(f"sample_rate {sr} Hz is outside the supported range [{MIN_RATE}, {MAX_RATE}] Hz")
    return sr


def _to_numpy(pcm) -> np.ndarray:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency of the package
        torch = None
    if torch is not None and isinstance(pcm, torch.Tensor):
        t = pcm.detach().cpu()
        if t.dtype in (torch.bfloat16, torch.float16):
            t = t.float()  # numpy has no bfloat16; float16 -> float32 is exact anyway
        return t.numpy()
    if isinstance(pcm, np.ndarray):
        return pcm
    raise ValueError(f"audio must be a numpy array or torch tensor, got {type(pcm).__name__}")


def _to_mono(x: np.ndarray) -> np.ndarray:
    if x.ndim == 1:
        return x
    if x.ndim != 2:
        raise ValueError(f"audio must be 1-D [n] or 2-D [n, ch] / [ch, n], got {x.ndim}-D shape {tuple(x.shape)}")
    a, b = x.shape
    # The channel axis is the short one (<= 8); `[n, ch]` wins a tie like [2, 2].
    if b <= MAX_CHANNELS and (b <= a or a > MAX_CHANNELS):
        axis = 1
    elif a <= MAX_CHANNELS:
        axis = 0
    else:
        raise ValueError(f"audio shape {tuple(x.shape)}: no axis has <= {MAX_CHANNELS} channels")
    if x.shape[axis] == 0:
        raise ValueError(f"audio shape {tuple(x.shape)} has zero channels")
    if x.shape[axis] == 1:
        return np.take(x, 0, axis=axis)
    # Average in float64 so the result does not depend on the channel layout's memory order.
    return x.astype(np.float64).mean(axis=axis)


def as_mono_float32(pcm, sample_rate) -> np.ndarray:
    """Validate and convert PCM to a contiguous mono float32 array `[n]`.

    pcm: numpy array / torch tensor, `[n]`, `[n, ch]` or `[ch, n]` (ch <= 8); float (any float
    dtype, taken as already in [-1, 1]) or int16 / int32 (scaled to [-1, 1]).
    sample_rate: Hz, an integer in [1000, 384000] (checked here so callers fail early).
    Raises ValueError for: wrong container, unsupported dtype, > 2-D, zero length, NaN / inf.
    """
    check_sample_rate(sample_rate)
    x = _to_numpy(pcm)
    if x.dtype in _INT_SCALE:
        scale = _INT_SCALE[x.dtype]
    elif np.issubdtype(x.dtype, np.floating):
        scale = None
    else:
        raise ValueError(f"unsupported audio dtype {x.dtype}: use float (any width), int16 or int32")
    if x.ndim == 0 or x.ndim > 2:
        raise ValueError(f"audio must be 1-D [n] or 2-D [n, ch] / [ch, n], got {x.ndim}-D shape {tuple(x.shape)}")
    if x.size == 0:
        raise ValueError(f"audio is empty (shape {tuple(x.shape)}): zero-length audio is not allowed")
    if scale is None:
        bad = ~np.isfinite(x)
        nbad = int(bad.sum())
        if nbad:
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            where = first[0] if len(first) == 1 else first
            raise ValueError(f"audio has {nbad} non-finite (NaN/inf) sample(s); the first is at index {where}")
    mono = _to_mono(x)
    if scale is not None:
        mono = mono.astype(np.float64) * scale
    return np.ascontiguousarray(mono, dtype=np.float32)
