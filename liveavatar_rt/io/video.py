"""Video out: a streaming MP4 (H.264 + AAC) writer and a decoding probe, on PyAV.

Timestamps are counters, never wall-clock: video pts = frames written (time base 1/fps),
audio pts = samples written (time base 1/sample_rate). Both streams therefore stay in sync
for any chunking, provided each ``write`` passes the audio that belongs to its frames
(``n * sample_rate / fps`` samples for ``n`` frames; 640 per frame at 16 kHz / 25 fps).
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Optional, Union

import av
import numpy as np

__all__ = ["Mp4Writer", "probe"]

# AAC-LC always codes 1024 samples per frame; used if the codec context does not say.
_AAC_FRAME = 1024


class Mp4Writer:
    """Write an MP4 incrementally: H.264 video (libx264, yuv420p) + mono AAC audio.

    Args:
        path: output file (overwritten).
        width, height: frame size in pixels. Both must be even (yuv420p halves the chroma
            planes); odd sizes raise ``ValueError`` rather than being silently padded or cropped.
        fps: frame rate (int, ``Fraction`` or float), 25 for Live Avatar.
        sample_rate: audio rate in Hz; ``None`` writes a video-only file.
        crf, preset: libx264 quality / speed (defaults favour speed: ``veryfast``, crf 20).
        audio_bitrate: AAC bit rate in bit/s.

    ``write`` encodes and hands packets to the muxer immediately, so memory stays bounded by
    the encoders' look-ahead (a few frames) and < 1 AAC frame of pending audio, whatever the
    video length. Use as a context manager or call ``close()``; the file is only complete
    (MP4 index written) after ``close()``.
    """

    def __init__(self, path: Union[str, Path], width: int, height: int, fps: Union[int, Fraction] = 25,
                 sample_rate: Optional[int] = 16000, *, crf: int = 20, preset: str = "veryfast",
                 audio_bitrate: int = 96_000):
        width, height = int(width), int(height)
        if width <= 0 or height <= 0:
            raise ValueError(f"frame size must be positive, got {width}x{height}")
        if width % 2 or height % 2:
            raise ValueError(f"H.264 yuv420p needs even frame dimensions, got {width}x{height} (W x H)")
        # A float like 29.97 becomes 2997/100; a huge binary-exact denominator would not mux.
        fps = Fraction(fps).limit_denominator(1001)
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        if sample_rate is not None and int(sample_rate) <= 0:
            raise ValueError(f"sample_rate must be positive or None, got {sample_rate}")

        self.path = Path(path)
        self.width, self.height, self.fps = width, height, fps
        self.sample_rate = None if sample_rate is None else int(sample_rate)
        self.frames_written = 0
        self.samples_written = 0  # samples handed to the encoder (pending ones excluded)
        self._pending = np.zeros(0, np.float32)
        self._closed = False

        self._container = av.open(str(self.path), mode="w", format="mp4")
        try:
            v = self._container.add_stream("libx264", rate=fps)
            v.width, v.height, v.pix_fmt = width, height, "yuv420p"
            self._video_tb = Fraction(1) / fps
            v.time_base = self._video_tb
            v.options = {"crf": str(crf), "preset": preset}
            self._vstream = v
            self._astream = None
            if self.sample_rate is not None:
                a = self._container.add_stream("aac", rate=self.sample_rate)
                a.layout = "mono"
                a.bit_rate = int(audio_bitrate)
                a.time_base = Fraction(1, self.sample_rate)
                self._astream = a
        except Exception:
            self._container.close()
            raise

    # -- public API -----------------------------------------------------------------------

    def write(self, frames_uint8, pcm_float32=None) -> None:
        """Append frames and the audio that accompanies them.

        Args:
            frames_uint8: ``uint8 [n, H, W, 3]`` RGB (numpy or CPU torch tensor); ``n`` may be 0.
            pcm_float32: mono float samples ``[m]`` in [-1, 1] (values outside are clipped), or
                ``None`` / empty for no audio in this call. Must be ``None`` for a video-only
                writer.
        """
        if self._closed:
            raise ValueError("Mp4Writer is closed")
        frames = self._check_frames(frames_uint8)
        pcm = self._check_pcm(pcm_float32)
        for rgb in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts = self.frames_written
            # Not stream.time_base: the muxer changes that (e.g. to 1/12800) once the header is written.
            frame.time_base = self._video_tb
            self._mux(self._vstream, frame)
            self.frames_written += 1
        if pcm is not None and pcm.size:
            self._pending = np.concatenate([self._pending, pcm])
            n = self._audio_frame_size()
            full = (self._pending.size // n) * n
            for start in range(0, full, n):
                self._encode_audio(self._pending[start:start + n])
            self._pending = self._pending[full:].copy()

    def close(self) -> None:
        """Flush encoders and finish the file. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._pending.size:
                # AAC accepts a short last frame (FFmpeg rounds it up to 16 samples, < 1 ms), so
                # the audio is not lengthened to a whole 1024-sample frame.
                self._encode_audio(self._pending)
                self._pending = np.zeros(0, np.float32)
            self._mux(self._vstream, None)
            if self._astream is not None:
                self._mux(self._astream, None)
        finally:
            self._container.close()

    @property
    def video_seconds(self) -> float:
        """Duration of the video written so far."""
        return float(self.frames_written / self.fps)

    @property
    def audio_seconds(self) -> float:
        """Duration of the audio written so far (including samples still buffered)."""
        if self.sample_rate is None:
            return 0.0
        return (self.samples_written + self._pending.size) / self.sample_rate

    def __enter__(self) -> "Mp4Writer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- internals ------------------------------------------------------------------------

    def _check_frames(self, frames) -> np.ndarray:
        if hasattr(frames, "detach") and hasattr(frames, "numpy"):  # torch tensor, no torch import
            frames = frames.detach().cpu().numpy()
        if not isinstance(frames, np.ndarray):
            raise TypeError(f"frames must be a uint8 numpy array [n, H, W, 3], got {type(frames).__name__}")
        if frames.dtype != np.uint8:
            raise ValueError(f"frames must be uint8, got dtype {frames.dtype}")
        want = (self.height, self.width, 3)
        if frames.ndim != 4 or tuple(frames.shape[1:]) != want:
            raise ValueError(f"frames must have shape [n, {self.height}, {self.width}, 3], got {tuple(frames.shape)}")
        return frames

    def _check_pcm(self, pcm) -> Optional[np.ndarray]:
        if pcm is None:
            return None
        if hasattr(pcm, "detach") and hasattr(pcm, "numpy"):
            pcm = pcm.detach().cpu().numpy()
        pcm = np.asarray(pcm)
        if pcm.size and self._astream is None:
            raise ValueError("this writer has no audio stream (sample_rate=None) but audio was given")
        if not np.issubdtype(pcm.dtype, np.floating):
            raise ValueError(f"audio must be float samples in [-1, 1], got dtype {pcm.dtype}")
        if pcm.ndim != 1:
            raise ValueError(f"audio must be mono, shape [m], got {tuple(pcm.shape)}")
        # Clip: out-of-range floats would be clamped differently by different decoders.
        return np.clip(pcm, -1.0, 1.0).astype(np.float32, copy=False)

    def _audio_frame_size(self) -> int:
        return self._astream.codec_context.frame_size or _AAC_FRAME

    def _encode_audio(self, samples: np.ndarray) -> None:
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[None, :]), format="fltp", layout="mono")
        frame.sample_rate = self.sample_rate
        frame.pts = self.samples_written  # pts from the sample count keeps A/V in sync
        frame.time_base = Fraction(1, self.sample_rate)
        self._mux(self._astream, frame)
        self.samples_written += samples.size

    def _mux(self, stream, frame) -> None:
        for packet in stream.encode(frame):
            self._container.mux(packet)


def probe(path: Union[str, Path]) -> dict:
    """Decode a media file fully and describe it (used by tests; cost ~ decode time).

    Returns a dict with keys: ``video_codec``, ``width``, ``height``, ``pix_fmt``, ``fps``
    (float), ``video_frames`` (decoded count), ``video_duration`` (frames / fps, s),
    ``audio_codec``, ``audio_sample_rate``, ``audio_channels``, ``audio_samples`` (decoded per
    channel, minus encoder priming and end padding), ``audio_decoded_samples`` (raw decoded
    count), ``audio_duration`` (``audio_samples / rate``, s) and ``audio_rms`` (of the decoded
    samples).
    Audio keys are ``None`` when the file has no audio stream (video keys likewise).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such media file: {path}")
    info = dict.fromkeys([
        "video_codec", "width", "height", "pix_fmt", "fps", "video_frames", "video_duration",
        "audio_codec", "audio_sample_rate", "audio_channels", "audio_samples", "audio_decoded_samples",
        "audio_duration", "audio_rms"])
    with av.open(str(path)) as c:
        vs = c.streams.video[0] if c.streams.video else None
        aus = c.streams.audio[0] if c.streams.audio else None
        n_frames, n_samples, sq = 0, 0, 0.0
        streams = [s for s in (vs, aus) if s is not None]
        for frame in c.decode(*streams) if streams else ():
            if isinstance(frame, av.VideoFrame):
                n_frames += 1
            else:
                a = frame.to_ndarray().astype(np.float64)
                if frame.format.name.startswith("s16"):
                    a /= 32768.0
                n_samples += frame.samples
                sq += float(np.sum(a * a)) / max(1, len(frame.layout.channels))
        if vs is not None:
            rate = vs.average_rate or vs.guessed_rate
            fps = float(rate) if rate else None
            info.update(video_codec=vs.codec_context.name, width=vs.codec_context.width,
                        height=vs.codec_context.height, pix_fmt=vs.codec_context.pix_fmt, fps=fps,
                        video_frames=n_frames, video_duration=(n_frames / fps) if fps else None)
        if aus is not None:
            sr = aus.codec_context.sample_rate
            # AAC codes whole 1024-sample frames; the decoder returns the last one in full. The
            # MP4 edit list records the real length, so cap the decoded count by it (the start
            # priming is already dropped by the demuxer).
            samples = n_samples
            if aus.duration and aus.time_base:
                samples = min(n_samples, round(aus.duration * aus.time_base * sr))
            info.update(audio_codec=aus.codec_context.name, audio_sample_rate=sr,
                        audio_channels=aus.codec_context.channels, audio_samples=samples,
                        audio_decoded_samples=n_samples, audio_duration=samples / sr,
                        audio_rms=(sq / n_samples) ** 0.5 if n_samples else 0.0)
    return info
