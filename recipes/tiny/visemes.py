"""espeak-ng phonemes -> per-frame mouth shape (open, width), with coarticulation.

Each phoneme gets a target (open in [0, 1], width in [0, 1], dominance). Diphthongs get two
targets, one per half. Targets are laid out on a 1 ms grid and blended with a dominance-weighted
Gaussian (sigma ~28 ms): a neighbouring phoneme pulls the mouth toward its own shape before
and after it (anticipatory + carry-over coarticulation), while high-dominance phonemes (the
lip closures p/b/m) keep their shape because they outweigh their neighbours. The frame value
is the mean over the frame's 40 ms window, i.e. over the same audio span the frame covers
(frame t <-> audio [t*640, (t+1)*640) at 16 kHz, 25 fps).

    mouth_track(phonemes, n_frames, fps=25) -> float32 [T, 2]  (open, width)

open: 0 = lips closed, 1 = widest jaw opening. width: 0 = rounded/pursed, 0.5 = neutral,
1 = spread (smile-like 'ee').
"""
from __future__ import annotations

import numpy as np

NEUTRAL = (0.0, 0.5, 1.0)  # pauses: closed, relaxed

# (open, width, dominance) by phoneme class.
_CLOSED = (0.0, 0.45, 6.0)     # p b m: lips must meet
_LABIODENTAL = (0.08, 0.5, 3.0)  # f v: lower lip to teeth
_ROUND_C = (0.12, 0.12, 2.0)   # w
_POSTALV = (0.18, 0.3, 1.5)    # S Z tS dZ r: lips protrude
_SIBILANT = (0.1, 0.7, 1.2)    # s z
_DENTAL = (0.18, 0.55, 1.0)    # T D
_ALVEOLAR = (0.22, 0.55, 0.5)  # t d n l
_VELAR = (0.28, 0.5, 0.4)      # k g N x
_GLOTTAL = (0.35, 0.5, 0.15)   # h: shaped by the following vowel
_PALATAL = (0.15, 0.75, 0.8)   # j

# Vowel qualities (first character(s) of the espeak name).
_VOWELS = {
    "a": (0.95, 0.65), "A": (1.0, 0.55), "V": (0.75, 0.55), "@": (0.45, 0.5), "3": (0.5, 0.45),
    "E": (0.7, 0.65), "e": (0.55, 0.7), "I": (0.35, 0.75), "i": (0.3, 0.85), "0": (0.8, 0.3),
    "O": (0.7, 0.25), "o": (0.55, 0.2), "U": (0.35, 0.2), "u": (0.28, 0.1), "y": (0.3, 0.15),
}
_DIPHTHONG_SECOND = {"I": "I", "U": "U", "@": "@"}
_CONSONANTS = {
    **{c: _CLOSED for c in "pbm"}, **{c: _LABIODENTAL for c in "fv"}, "w": _ROUND_C,
    **{c: _POSTALV for c in ("S", "Z", "tS", "dZ", "r", "r-")},
    **{c: _SIBILANT for c in "sz"}, **{c: _DENTAL for c in "TD"},
    **{c: _ALVEOLAR for c in ("t", "d", "n", "l", "t#", "d#", "?", "n-", "l-")},
    **{c: _VELAR for c in ("k", "g", "N", "x")}, "h": _GLOTTAL, "j": _PALATAL,
}


def _vowel(ch: str) -> tuple[float, float, float]:
    o, w = _VOWELS[ch]
    return (o, w, 1.0)


def targets(name: str) -> list[tuple[float, float, float]]:
    """espeak phoneme name -> 1 or 2 (open, width, dominance) targets (2 for diphthongs).
    Unknown names fall back to a neutral half-open target rather than failing: espeak voices
    differ in their phoneme inventories."""
    if not name or name.startswith("_") or name in ("||", "|", ";"):
        return [NEUTRAL]
    if name in _CONSONANTS:
        return [_CONSONANTS[name]]
    if name[0] in _VOWELS:
        first = _vowel(name[0])
        rest = name[1:]
        if rest and rest[0] in _DIPHTHONG_SECOND and rest[0] != name[0]:
            return [first, _vowel(_DIPHTHONG_SECOND[rest[0]])]
        return [first]
    core = name.rstrip("#:;![-")  # variant marks do not change the lip shape
    if core in _CONSONANTS:
        return [_CONSONANTS[core]]
    if name[0] in _CONSONANTS:
        return [_CONSONANTS[name[0]]]
    return [(0.3, 0.5, 0.5)]


def _gauss(sigma_ms: float) -> np.ndarray:
    r = int(3 * sigma_ms)
    x = np.arange(-r, r + 1, dtype=np.float64)
    g = np.exp(-0.5 * (x / sigma_ms) ** 2)
    return g / g.sum()


def mouth_track(phonemes, n_frames: int, fps: int = 25, sigma_ms: float = 28.0,
                offset_s: float = 0.0) -> np.ndarray:
    """phonemes: iterable of (name, start s, end s) on the clip's time axis (minus offset_s).
    Time not covered by any phoneme is a pause. -> float32 [n_frames, 2] (open, width)."""
    if n_frames <= 0:
        raise ValueError(f"mouth_track: n_frames must be positive, got {n_frames}")
    total_ms = int(round(n_frames * 1000 / fps))
    pad = int(3 * sigma_ms) + 1
    n = total_ms + 2 * pad
    o = np.full(n, NEUTRAL[0])
    w = np.full(n, NEUTRAL[1])
    d = np.full(n, NEUTRAL[2])
    for name, t0, t1 in phonemes:
        a = int(round((t0 + offset_s) * 1000)) + pad
        b = int(round((t1 + offset_s) * 1000)) + pad
        a, b = max(a, 0), min(b, n)
        if b <= a:
            continue
        tg = targets(name)
        cuts = np.linspace(a, b, len(tg) + 1).round().astype(int)
        for (to, tw, td), s, e in zip(tg, cuts[:-1], cuts[1:]):
            o[s:e], w[s:e], d[s:e] = to, tw, td
    g = _gauss(sigma_ms)
    den = np.convolve(d, g, "same")
    o_s = np.convolve(o * d, g, "same") / den
    w_s = np.convolve(w * d, g, "same") / den
    ms_per_frame = 1000 / fps
    out = np.empty((n_frames, 2), np.float32)
    for t in range(n_frames):
        s = pad + int(round(t * ms_per_frame))
        e = pad + int(round((t + 1) * ms_per_frame))
        out[t, 0] = o_s[s:e].mean()
        out[t, 1] = w_s[s:e].mean()
    return np.clip(out, 0.0, 1.0)
