"""The evaluation clip set: identities (portrait + mouth box) and speech clips with ground truth.

`assets/eval/manifest.json`:
    {"fps": 25, "sample_rate": 16000,
     "identities": [{"name", "image" (PNG, 128x128), "mouth_box": [x0, y0, x1, y1] normalized}],
     "clips": [{"name", "audio" (WAV, 16 kHz mono), "identity", "mouth_open": [one value per video frame]}]}

`LoopedClips` plays an identity's clips in order, forever, and hands out audio together with
the ground-truth mouth track of exactly the same span: each clip's audio is cut or zero-padded
to len(mouth_open) video frames (sample_rate / fps samples each), so video frame k of the loop
always has truth[k], however many times the set wraps.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEFAULT_DIR = Path(__file__).resolve().parents[2] / "assets" / "eval"


class ManifestError(ValueError):
    pass


@dataclass(frozen=True)
class Identity:
    name: str
    image: Path
    mouth_box: tuple[float, float, float, float]


@dataclass(frozen=True)
class Clip:
    name: str
    audio: Path
    identity: str
    mouth_open: np.ndarray  # float [frames] ground truth at `fps`


@dataclass(frozen=True)
class ClipSet:
    root: Path
    fps: int
    sample_rate: int
    identities: dict[str, Identity]
    clips: list[Clip]

    def identity(self, name: str | None) -> Identity:
        if name is None:
            return next(iter(self.identities.values()))
        if name not in self.identities:
            raise ManifestError(f"identity {name!r} is not in {self.root / 'manifest.json'} "
                                f"(known: {sorted(self.identities)})")
        return self.identities[name]

    def clips_for(self, identity: str) -> list[Clip]:
        clips = [c for c in self.clips if c.identity == identity]
        if not clips:
            raise ManifestError(f"no clip in {self.root / 'manifest.json'} belongs to identity {identity!r}")
        return clips


def _field(entry: dict, key: str, where: str):
    if key not in entry:
        raise ManifestError(f"{where} has no {key!r}")
    return entry[key]


def load_clip_set(root: str | Path = DEFAULT_DIR) -> ClipSet:
    """Read and validate a manifest; every referenced file must exist. Errors name the entry."""
    root = Path(root)
    path = root / "manifest.json"
    if not path.is_file():
        raise ManifestError(f"{path} does not exist (the eval clip set; pass --clips DIR)")
    try:
        m = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path} is not valid JSON: {exc}") from exc
    fps, rate = int(_field(m, "fps", str(path))), int(_field(m, "sample_rate", str(path)))
    if rate % fps:
        raise ManifestError(f"{path}: sample_rate {rate} is not a whole number of samples per frame at {fps} fps")
    idents = {}
    for i, e in enumerate(_field(m, "identities", str(path))):
        where = f"{path} identities[{i}]"
        box = tuple(float(v) for v in _field(e, "mouth_box", where))
        if len(box) != 4 or not (0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1):
            raise ManifestError(f"{where}: mouth_box {box} is not normalized (x0, y0, x1, y1) with x0<x1, y0<y1")
        img = root / _field(e, "image", where)
        if not img.is_file():
            raise ManifestError(f"{where}: image {img} does not exist")
        idents[str(_field(e, "name", where))] = Identity(str(e["name"]), img, box)
    if not idents:
        raise ManifestError(f"{path} lists no identities")
    clips = []
    for i, e in enumerate(_field(m, "clips", str(path))):
        where = f"{path} clips[{i}]"
        audio = root / _field(e, "audio", where)
        if not audio.is_file():
            raise ManifestError(f"{where}: audio {audio} does not exist")
        ident = str(_field(e, "identity", where))
        if ident not in idents:
            raise ManifestError(f"{where}: identity {ident!r} is not listed under identities")
        truth = np.asarray(_field(e, "mouth_open", where), dtype=np.float64)
        if truth.ndim != 1 or len(truth) == 0 or not np.isfinite(truth).all():
            raise ManifestError(f"{where}: mouth_open must be a non-empty list of finite numbers")
        clips.append(Clip(str(_field(e, "name", where)), audio, ident, truth))
    if not clips:
        raise ManifestError(f"{path} lists no clips")
    return ClipSet(root, fps, rate, idents, clips)


class LoopedClips:
    """An identity's clips played in a loop: `next_clip()` -> (pcm float32 [n], truth [frames])
    with n == frames * sample_rate / fps exactly."""

    def __init__(self, clip_set: ClipSet, identity: str):
        from ..io.audio_file import read_audio
        from ..audio.pcm import as_mono_float32

        self.samples_per_frame = clip_set.sample_rate // clip_set.fps
        self.items = []
        for clip in clip_set.clips_for(identity):
            pcm, rate = read_audio(clip.audio)
            if rate != clip_set.sample_rate:
                raise ManifestError(f"clip {clip.name!r}: {clip.audio} is {rate} Hz, the manifest says "
                                    f"{clip_set.sample_rate} Hz")
            pcm = as_mono_float32(pcm, rate)
            n = len(clip.mouth_open) * self.samples_per_frame
            pcm = np.concatenate([pcm[:n], np.zeros(max(0, n - len(pcm)), np.float32)])
            self.items.append((pcm, clip.mouth_open))
        self._i = 0

    def next_clip(self) -> tuple[np.ndarray, np.ndarray]:
        item = self.items[self._i % len(self.items)]
        self._i += 1
        return item
