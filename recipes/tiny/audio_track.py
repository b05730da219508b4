"""A clip's soundtrack: espeak-ng phrases separated by silences, plus noise augmentation.

    speech_track(rng, seconds) -> Track(clean [N], audio [N], phonemes, texts, voice, snr_db)

N = seconds * 16000 exactly. Phrases (2-8 random words from WORDS, sometimes with a comma) are
placed after a random lead-in silence with 0.15-1.0 s gaps; a phrase running past the end is
cut (its phonemes too). About 5% of clips are silent and 10% have long pauses. Each clip has one
voice (accent + variant + rate + pitch + pitch range). Noise: with p = 0.6, white / pink / brown
noise at an SNR of 5-35 dB against the speech power; gain so the peak is 0.3-0.95.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .speech import LANGUAGES, SAMPLE_RATE, VARIANTS, FreshEngine, Voice

WORDS = tuple("""
the a and to of in is you that it he she was for on are with as his her they at be this have
from or one had by word but not what all were we when your can said there use an each which do
how their if will up other about out many then them these so some would make like him into
time has look two more write go see number no way could people my than first water been call
who oil its now find long down day did get come made may part over new sound take only little
work know place year live me back give most very after thing our just name good sentence man
think say great where help through much before line right too mean old any same tell boy
follow came want show also around form three small set put end does another well large must
big even such because turn here why ask went men read need land different home us move try
kind hand picture again change off play spell air away animal house point page letter mother
answer found study still learn should world high every near add food between own below country
plant last school father keep tree never start city earth eye light thought head under story
saw left few while along might close something seem next hard open example begin life always
those both paper together got group often run important until children side feet car mile
night walk white sea began grow took river four carry state once book hear stop without second
later miss idea enough eat face watch far really almost let above girl sometimes mountain cut
young talk soon list song being leave family music color blue purple yellow happy bubble maybe
morning window people pepper moon balloon cheese apple orange banana mama papa baby wow oh
""".split())


@dataclass
class Track:
    clean: np.ndarray        # float32 [N] speech only
    audio: np.ndarray        # float32 [N] speech + noise, the model input
    phonemes: list           # [(name, t0, t1)] on the clip's time axis, seconds
    texts: list              # phrases spoken, in order
    voice: Voice
    snr_db: float | None     # None: no noise added


def sample_voice(rng: np.random.Generator) -> Voice:
    lang = LANGUAGES[rng.integers(len(LANGUAGES))]
    var = VARIANTS[rng.integers(len(VARIANTS))]
    return Voice(name=lang + ("+" + var if var else ""), rate=int(rng.integers(120, 221)),
                 pitch=int(rng.integers(25, 76)), pitch_range=int(rng.integers(20, 81)),
                 word_gap=int(rng.choice([0, 0, 0, 1, 2])))


def _phrase(rng: np.random.Generator) -> str:
    n = int(rng.integers(2, 9))
    words = [WORDS[i] for i in rng.integers(0, len(WORDS), n)]
    if n >= 5 and rng.random() < 0.4:
        words[int(rng.integers(1, n - 1))] += ","
    return " ".join(words)


def _noise(rng: np.random.Generator, n: int) -> np.ndarray:
    kind = rng.integers(3)
    x = rng.standard_normal(n)
    if kind == 1:  # pink-ish: white + leaky-integrated white
        b = np.cumsum(rng.standard_normal(n)) * 0.05
        b -= np.convolve(b, np.ones(401) / 401, "same")
        x = x + b * 3
    elif kind == 2:  # brown: integrated, high-passed so it does not drift
        b = np.cumsum(x)
        x = b - np.convolve(b, np.ones(801) / 801, "same")
    return x / (np.sqrt(np.mean(x * x)) + 1e-12)


def speech_track(rng: np.random.Generator, seconds: float) -> Track:
    n = int(round(seconds * SAMPLE_RATE))
    if n < SAMPLE_RATE // 5:
        raise ValueError(f"clip too short for speech: {seconds} s")
    voice = sample_voice(rng)
    clean = np.zeros(n, np.float64)
    phonemes, texts = [], []
    mode = rng.random()
    long_pauses = 0.05 <= mode < 0.15
    t = rng.uniform(0.0, 0.6) if mode >= 0.05 else seconds  # 5%: no speech at all
    eng = FreshEngine(voice)  # one engine per clip: its speech depends only on its phrases
    try:
        while t < seconds - 0.3:
            sp = eng.say(_phrase(rng))
            start = int(round(t * SAMPLE_RATE))
            seg = sp.pcm[: n - start]
            clean[start: start + len(seg)] += seg
            for name, a, b in sp.phonemes:
                if t + a < seconds:
                    phonemes.append((name, t + a, min(t + b, seconds)))
            texts.append(sp.text)
            t += sp.seconds + (rng.uniform(0.8, 1.6) if long_pauses else rng.uniform(0.15, 1.0))
    finally:
        eng.close()
    peak = np.abs(clean).max()
    if peak > 0:
        clean *= rng.uniform(0.3, 0.95) / peak
    audio = clean.copy()
    snr = None
    if rng.random() < 0.6:
        snr = float(rng.uniform(5, 35))
        active = clean[np.abs(clean) > 1e-3]
        p_sig = float(np.mean(active ** 2)) if len(active) else 1e-4
        audio += _noise(rng, n) * np.sqrt(p_sig / 10 ** (snr / 10))
    np.clip(audio, -1, 1, out=audio)
    return Track(clean.astype(np.float32), audio.astype(np.float32), phonemes, texts, voice, snr)
