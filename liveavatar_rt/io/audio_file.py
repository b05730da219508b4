"""Read an audio file (wav, mp3, flac, m4a, ogg, ... anything FFmpeg decodes) with PyAV."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np


class AudioFileError(ValueError):
    pass


def read_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """-> (float32 PCM [n] or [n, channels] in [-1, 1], sample rate). Errors name the file."""
    import av

    p = Path(path)
    if not p.is_file():
        raise AudioFileError(f"audio file {str(p)!r} does not exist")
    if p.stat().st_size == 0:
        raise AudioFileError(f"audio file {str(p)!r} is empty")
    try:
        with av.open(str(p)) as container:
            if not container.streams.audio:
                raise AudioFileError(f"{str(p)!r} has no audio stream")
            stream = container.streams.audio[0]
            rate = stream.codec_context.sample_rate
            # planar float per channel whatever the codec's native format
            resampler = av.AudioResampler(format="fltp", layout=stream.layout.name, rate=rate)
            chunks = []
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray())
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray())
    except AudioFileError:
        raise
    except Exception as exc:  # av.error.InvalidDataError and friends: not audio we can decode
        raise AudioFileError(f"cannot decode audio file {str(p)!r}: {exc}") from exc
    if not chunks:
        raise AudioFileError(f"audio file {str(p)!r} holds no samples")
    pcm = np.concatenate(chunks, axis=1).T.astype(np.float32)  # [n, channels]
    return (pcm[:, 0] if pcm.shape[1] == 1 else pcm), int(rate)
