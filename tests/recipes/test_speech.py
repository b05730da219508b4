"""espeak-ng synthesis through libespeak-ng: phoneme timings against the audio, determinism."""
import numpy as np
import pytest

from recipes.tiny.speech import SAMPLE_RATE, FreshEngine, Voice, resample_fft, synthesize
from recipes.tiny.visemes import targets

TEXT = "Maybe we should buy more paper, said the old man."


def _rms(pcm, t0, t1):
    seg = pcm[int(t0 * SAMPLE_RATE): int(t1 * SAMPLE_RATE)].astype(np.float64)
    return float(np.sqrt(np.mean(seg ** 2))) if len(seg) else 0.0


@pytest.mark.parametrize("voice", [Voice("en-us", 150), Voice("en-gb-x-rp+f2", 200, pitch=70),
                                   Voice("en-029+klatt", 120, pitch=30)])
def test_phoneme_timings_match_audio_energy(voice):
    sp = synthesize(TEXT, voice)
    ph = sp.phonemes
    assert sp.pcm.dtype == np.float32 and sp.pcm.ndim == 1
    # contiguous, sorted, ending where the audio ends
    assert all(a[2] == pytest.approx(b[1]) for a, b in zip(ph, ph[1:]))
    assert all(t1 > t0 for _, t0, t1 in ph)
    assert ph[-1][2] == pytest.approx(sp.seconds, abs=0.01)
    vowels = [_rms(sp.pcm, t0, t1) for n, t0, t1 in ph if targets(n)[0][0] >= 0.45]
    pauses = [_rms(sp.pcm, t0, t1) for n, t0, t1 in ph if n.startswith("_") and t1 - t0 > 0.03]
    assert len(vowels) >= 5 and pauses, ph
    # pauses are near-silent, vowels loud: timings that were off by a phoneme would mix them
    assert max(pauses) < 0.1 * np.median(vowels)
    # bilabial closures (p, b, m) are quieter than the vowels around them
    closures = [_rms(sp.pcm, t0, t1) for n, t0, t1 in ph if n in ("p", "b")]
    assert closures and np.median(closures) < 0.6 * np.median(vowels)


def test_synthesis_does_not_depend_on_history():
    v = Voice("en-us+m3", 150)
    first = synthesize("how are you today my friend", v)
    with FreshEngine(Voice("en+klatt", 200, pitch=70, word_gap=2)) as eng:
        eng.say("something else entirely")
        eng.say("and more of it")
    again = synthesize("how are you today my friend", v)
    assert np.array_equal(first.pcm, again.pcm)
    assert first.phonemes == again.phonemes


def test_voice_parameters_change_the_audio():
    slow = synthesize("hello there", Voice("en-us", 120))
    fast = synthesize("hello there", Voice("en-us", 300))
    assert fast.seconds < 0.8 * slow.seconds


def test_bad_input_errors():
    with pytest.raises(ValueError, match="empty"):
        synthesize("   ")
    with pytest.raises(RuntimeError, match="no-such-voice"):
        synthesize("hello", Voice("no-such-voice"))


def test_resample_fft_keeps_a_tone():
    # A tone that fades in and out, like speech between silences (a hard cut would ring:
    # spectrum truncation is exact only for signals that start and end quietly).
    def tone(rate):
        t = np.arange(rate) / rate
        fade = np.clip(np.minimum(t, 1 - t) / 0.1, 0, 1)
        return 0.5 * np.sin(2 * np.pi * 440 * t) * fade
    y = resample_fft(tone(22050), 22050, 16000)
    assert len(y) == 16000 and y.dtype == np.float32
    assert np.max(np.abs(y - tone(16000))) < 2e-3


@pytest.mark.parametrize("voice", [Voice("en-us", 170), Voice("en-gb-scotland+m3", 140)])
def test_speech_onsets_after_pauses_match_phoneme_starts(voice):
    # where a pause ends, the energy must rise within a few ms of the next phoneme's start
    # words after the commas start with loud (voiced) sounds, so the onset is well defined
    sp = synthesize("one two three, nine men, and many more, nine ten", voice)
    x = sp.pcm.astype(np.float64)
    env = np.sqrt(np.convolve(x * x, np.ones(80) / 80, "same"))  # 5 ms RMS
    loud = 0.1 * np.median([_rms(sp.pcm, a, b) for n, a, b in sp.phonemes
                            if targets(n)[0][0] >= 0.45])
    onsets, pause = 0, 0.0
    for name, a, b in sp.phonemes:
        if name.startswith("_"):
            pause += b - a  # '_:' then a short '_': one pause
            continue
        if pause > 0.05:
            s = int(a * SAMPLE_RATE)
            lo = s - int(0.06 * SAMPLE_RATE)
            first = lo + np.nonzero(env[lo: s + int(0.1 * SAMPLE_RATE)] > loud)[0][0]
            assert abs(first - s) / SAMPLE_RATE < 0.01, (name, a, (first - s) / SAMPLE_RATE)
            onsets += 1
        pause = 0.0
    assert onsets >= 3
