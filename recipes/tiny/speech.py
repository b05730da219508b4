"""espeak-ng speech with exact phoneme timings, through libespeak-ng (ctypes).

Why the library and not the CLI: espeak-ng 1.51's `--pho` prints nothing without an MBROLA
voice, and `-x`/`-X` give phonemes without times. The C API, initialised with
espeakINITIALIZE_PHONEME_EVENTS, reports one event per phoneme carrying the sample index at which
that phoneme starts in the synthesised audio (`espeak_EVENT.sample`, at the voice's native
22050 Hz). Those start indices are the timings used here; tests check them against the audio
energy (pauses are quiet, vowels loud).

    synthesize(text, Voice(...)) -> Speech(pcm float32 [N] at 16 kHz, phonemes [(name, t0, t1)])

Determinism: libespeak-ng carries state from one utterance to the next (timings drift by a
few samples), so synthesis runs in a forked child with a fresh engine (FreshEngine; one per
clip): for a given espeak-ng build, the same texts + voice give the same samples.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import math
import os
import pickle
import threading
import traceback
from dataclasses import dataclass, field

import numpy as np

from liveavatar_rt.system_deps import require

SAMPLE_RATE = 16000

# espeak_AUDIO_OUTPUT / espeak_EVENT_TYPE / espeak_PARAMETER values from speak_lib.h.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INIT_PHONEME_EVENTS = 0x0001
_EV_PHONEME = 7
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_P_RATE, _P_VOLUME, _P_PITCH, _P_RANGE, _P_WORDGAP = 1, 2, 3, 4, 7

# Voices that work offline with the stock espeak-ng-data (no MBROLA): accents x variants.
LANGUAGES = ("en-us", "en", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-gb-x-gbclan")
VARIANTS = ("", "m1", "m2", "m3", "m4", "m7", "f1", "f2", "f3", "f4", "f5", "klatt", "klatt2",
            "klatt3", "croak", "john", "Andy", "Annie", "linda", "max", "michel", "steph")


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p),
                ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint),
                ("text_position", ctypes.c_int), ("length", ctypes.c_int),
                ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", _EventId)]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                             ctypes.POINTER(_Event))


@dataclass(frozen=True)
class Voice:
    """espeak-ng voice settings. name: 'en-us' or 'en-us+f2'; rate in words/minute (80-450);
    pitch and pitch_range in 0-100 (50 = normal); word_gap in units of 10 ms."""
    name: str = "en-us"
    rate: int = 160
    pitch: int = 50
    pitch_range: int = 50
    word_gap: int = 0


@dataclass
class Speech:
    """pcm: float32 [N] in [-1, 1] at 16 kHz. phonemes: (espeak phoneme name, start s, end s),
    contiguous and sorted; pauses are named '_', '_:' etc."""
    pcm: np.ndarray
    phonemes: list[tuple[str, float, float]] = field(default_factory=list)
    text: str = ""
    voice: Voice = Voice()

    @property
    def seconds(self) -> float:
        return len(self.pcm) / SAMPLE_RATE


class _Engine:
    """An initialised libespeak-ng. The library is global state of the process, and it carries
    state between utterances: only use it inside a FreshEngine child."""

    def __init__(self):
        path = ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1"
        try:
            self.lib = ctypes.CDLL(path)
        except OSError as e:
            raise RuntimeError("libespeak-ng not found: install it with "
                               "`apt-get install espeak-ng` (Debian package libespeak-ng1)") from e
        self.lock = threading.Lock()
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[str, int]] = []
        self._cb = _CALLBACK(self._on_audio)  # kept referenced: the library holds the pointer
        self._init()

    def _init(self):
        self.rate = self.lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, None,
                                               _INIT_PHONEME_EVENTS)
        if self.rate <= 0:
            raise RuntimeError("espeak_Initialize failed (espeak-ng-data missing?)")
        self.lib.espeak_SetSynthCallback(self._cb)

    def _on_audio(self, wav, n, events):
        if wav and n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, (n,)).copy())
        i = 0
        while events[i].type != 0:
            ev = events[i]
            if ev.type == _EV_PHONEME:
                self._events.append((ev.id.string.decode("utf-8", "replace"), int(ev.sample)))
            i += 1
        return 0

    def synth(self, text: str, voice: Voice) -> tuple[np.ndarray, list[tuple[str, int]]]:
        """-> (int16 [M] at self.rate, [(phoneme, start sample)])."""
        with self.lock:
            if self.lib.espeak_SetVoiceByName(voice.name.encode()) != 0:
                raise ValueError(f"espeak-ng voice {voice.name!r} not found")
            for p, v in ((_P_RATE, voice.rate), (_P_PITCH, voice.pitch),
                         (_P_RANGE, voice.pitch_range), (_P_WORDGAP, voice.word_gap),
                         (_P_VOLUME, 100)):
                self.lib.espeak_SetParameter(p, int(v), 0)
            self._chunks, self._events = [], []
            data = text.encode("utf-8")
            err = self.lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8,
                                        None, None)
            self.lib.espeak_Synchronize()
            if err != 0:
                raise RuntimeError(f"espeak_Synth failed with code {err} for {text!r}")
            pcm = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
            return pcm, list(self._events)


class FreshEngine:
    """A libespeak-ng engine in a forked child process, started fresh for this object:

        with FreshEngine(voice) as eng:
            a = eng.say("first phrase"); b = eng.say("second phrase")

    Why a child: libespeak-ng carries state from one utterance to the next (timings drift by
    a few samples depending on what was spoken before), and espeak_Terminate +
    espeak_Initialize in one process can hang. A fresh engine per clip makes each clip's
    speech depend only on its own sequence of say() calls. The parent never initialises the
    library. Cost: one fork + initialisation (~70 ms) per engine."""

    def __init__(self, voice: Voice = Voice()):
        require("espeak-ng")  # here, with the install command, not as an EOFError from the child
        self.voice = voice
        req_r, req_w = os.pipe()
        res_r, res_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # child: serve texts until EOF, exit without running any cleanup
            code = 1
            try:
                os.close(req_w)
                os.close(res_r)
                _serve(os.fdopen(req_r, "rb"), os.fdopen(res_w, "wb"), voice)
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        os.close(req_r)
        os.close(res_w)
        self._req, self._res = os.fdopen(req_w, "wb"), os.fdopen(res_r, "rb")

    def say(self, text: str) -> "Speech":
        if not text.strip():
            raise ValueError("synthesize: empty text")
        try:
            pickle.dump(text, self._req)
            self._req.flush()
            rate, raw, events = pickle.load(self._res)
        except (EOFError, BrokenPipeError) as e:
            raise RuntimeError(f"espeak-ng synthesis failed for {text!r} with voice "
                               f"{self.voice} (see the child's traceback above)") from e
        return _to_speech(text, self.voice, rate, raw, events)

    def close(self):
        if self.pid:
            self._req.close()
            self._res.close()
            os.waitpid(self.pid, 0)
            self.pid = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _serve(req, res, voice: Voice):
    eng = _Engine()
    while True:
        try:
            text = pickle.load(req)
        except EOFError:
            return
        pcm, events = eng.synth(text, voice)
        pickle.dump((eng.rate, pcm, events), res)
        res.flush()


def resample_fft(x: np.ndarray, in_rate: int, out_rate: int) -> np.ndarray:
    """Band-limited resampling by truncating/zero-padding the spectrum. x: float [M] ->
    float32 [round(M * out_rate / in_rate)]. Zero padding at the end keeps the circular wrap
    away from the signal (speech from espeak ends in silence anyway)."""
    m = len(x)
    n_out = int(round(m * out_rate / in_rate))
    if m == 0:
        return np.zeros(0, np.float32)
    # The padded length must map to a whole number of output samples, or the output time
    # axis would be stretched slightly (drifting by a fraction of a sample per second).
    q = in_rate // math.gcd(in_rate, out_rate)
    pad = -(-(m + max(256, m // 8)) // q) * q
    n_pad_out = pad * out_rate // in_rate
    spec = np.fft.rfft(x.astype(np.float64), pad)
    keep = min(len(spec), n_pad_out // 2 + 1)
    out = np.fft.irfft(spec[:keep], n_pad_out) * (n_pad_out / pad)
    return out[:n_out].astype(np.float32)


def synthesize(text: str, voice: Voice = Voice()) -> Speech:
    """Speak `text` with `voice` (fresh engine) -> Speech at 16 kHz, phoneme intervals in s."""
    with FreshEngine(voice) as eng:
        return eng.say(text)


def _to_speech(text: str, voice: Voice, rate: int, raw: np.ndarray, events) -> Speech:
    pcm = resample_fft(raw.astype(np.float32) / 32768.0, rate, SAMPLE_RATE)
    np.clip(pcm, -1.0, 1.0, out=pcm)
    total = len(raw) / rate
    # Phoneme events mark starts; several can share one sample (zero-length markers such as
    # the sentence-end '_' before the next one): keep the last of those, end = next start.
    starts: list[tuple[str, float]] = []
    for name, sample in events:
        t = min(sample / rate, total)
        if starts and abs(starts[-1][1] - t) < 1e-9:
            starts[-1] = (name, t)
        else:
            starts.append((name, t))
    phonemes = [(n, t, starts[i + 1][1] if i + 1 < len(starts) else total)
                for i, (n, t) in enumerate(starts)]
    phonemes = [p for p in phonemes if p[2] > p[1]]
    return Speech(pcm=pcm, phonemes=phonemes, text=text, voice=voice)
