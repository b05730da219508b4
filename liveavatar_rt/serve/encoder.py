"""Blocks of frames + their audio -> fragmented MP4 segments (H.264 + AAC) for MSE.

    enc = SegmentEncoder(width, height, fps=25, sample_rate=16000)
    seg = enc.encode(video_uint8, pcm_float32)   # video [n, H, W, 3], pcm [n * rate / fps]
    enc.init                                    # ftyp+moov, known after the first encode()
    last = enc.flush()                          # the audio still inside the AAC encoder

Each block starts with an IDR frame, so every segment is decodable on its own: a segment
dropped for a slow client leaves a gap the player can jump, never a broken picture.
x264 runs with `tune=zerolatency` (no B-frames, no look-ahead, one packet per frame at once).

A/V sync: video frame k has decode time k / fps; AAC packets keep the encoder's own sample
timestamps (pts = first input sample of the packet). The encoder's priming packet (pts
-1024) is dropped rather than shifted, so audio sample s plays at s / rate, the same clock as
the frames; only the first 64 ms of the stream lose the decoder's overlap (a short fade-in).
"""
from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from ..config import AUDIO_RATE
from .fmp4 import AUDIO_TRACK, TICKS_PER_FRAME, VIDEO_TRACK, Sample, codec_string, init_segment, media_segment


def split_annexb(data: bytes) -> list[bytes]:
    """H.264 Annex-B byte stream -> NAL units (start codes removed)."""
    nals, i, n = [], 0, len(data)
    starts = []
    while True:
        j = data.find(b"\x00\x00\x01", i)
        if j < 0:
            break
        starts.append(j + 3)
        i = j + 3
    for k, s in enumerate(starts):
        end = starts[k + 1] - 3 if k + 1 < len(starts) else n
        nal = data[s:end]
        if k + 1 < len(starts) and nal.endswith(b"\x00"):
            nal = nal[:-1]  # the leading zero of a 4-byte start code belongs to the next NAL
        if nal:
            nals.append(nal)
    return nals


class SegmentEncoder:
    """Stateful: one per stream. Not thread-safe (one worker thread owns it)."""

    def __init__(self, width: int, height: int, fps: int = 25, sample_rate: int = AUDIO_RATE,
                 audio_bitrate: int = 64000, crf: int = 23):
        if width % 2 or height % 2:
            raise ValueError(f"H.264 4:2:0 needs even frame sizes, got {width}x{height}")
        self.width, self.height, self.fps, self.sample_rate = width, height, int(fps), int(sample_rate)
        self.audio_bitrate = audio_bitrate
        v = av.CodecContext.create("libx264", "w")
        v.width, v.height, v.pix_fmt = width, height, "yuv420p"
        v.time_base = Fraction(1, self.fps)
        v.framerate = Fraction(self.fps, 1)
        v.gop_size = 100000  # keyframes only where forced: at each block start
        v.options = {"preset": "veryfast", "tune": "zerolatency", "profile": "baseline", "crf": str(crf),
                     "forced-idr": "1", "threads": "1"}
        v.open()
        a = av.CodecContext.create("aac", "w")
        a.sample_rate, a.layout, a.format = self.sample_rate, "mono", "fltp"
        a.bit_rate = audio_bitrate
        a.time_base = Fraction(1, self.sample_rate)
        a.open()
        self._v, self._a = v, a
        self._rgb2yuv = VideoReformatter()
        self._asc = bytes(a.extradata or b"")
        self._frame_size = a.frame_size or 1024
        self._pending = np.zeros(0, np.float32)
        self._samples_in = 0
        self._carry: list[tuple[int, Sample]] = []  # audio packets that came before the first frame
        self.frames = 0  # video frames encoded
        self.sequence = 0
        self.init: bytes | None = None
        self.mime: str | None = None

    def encode(self, video: np.ndarray, pcm: np.ndarray | None) -> bytes | None:
        """video uint8 [n, H, W, 3] (n may be 0), pcm float32 [m] in [-1, 1] -> one media
        segment (None if nothing came out of the encoders)."""
        video = np.asarray(video)
        if video.dtype != np.uint8 or video.ndim != 4 or video.shape[1:] != (self.height, self.width, 3):
            raise ValueError(f"video must be uint8 [n, {self.height}, {self.width}, 3], got "
                             f"{video.dtype} {tuple(video.shape)}")
        vs = []
        for i, rgb in enumerate(video):
            # One reused reformatter: a fresh swscale context per frame costs 5x the conversion.
            frame = self._rgb2yuv.reformat(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24"),
                                           format="yuv420p")
            frame.pts = self.frames
            frame.time_base = self._v.time_base
            if i == 0:
                frame.pict_type = av.video.frame.PictureType.I
            self.frames += 1
            vs += [self._video_sample(p) for p in self._v.encode(frame)]
        as_ = self._audio(pcm)
        return self._segment(vs, as_)

    def flush(self) -> bytes | None:
        """End of stream: drain both encoders (the AAC tail) into a last segment, or None."""
        vs = [self._video_sample(p) for p in self._v.encode(None)]
        tail, self._pending = self._pending, np.zeros(0, np.float32)
        packets = list(self._encode_audio(tail)) if tail.size else []
        packets += list(self._a.encode(None))
        return self._segment(vs, self._audio_samples(packets))

    # ---- internals ------------------------------------------------------------------------
    def _video_sample(self, packet) -> tuple[int, Sample]:
        nals = split_annexb(bytes(packet))
        if self.init is None:
            sps = next((n for n in nals if n[0] & 0x1F == 7), None)
            pps = next((n for n in nals if n[0] & 0x1F == 8), None)
            if sps is None or pps is None:
                raise RuntimeError("the first H.264 packet carries no SPS/PPS")
            self.init = init_segment(self.width, self.height, self.fps, sps, pps, self.sample_rate, self._asc,
                                     self.audio_bitrate)
            self.mime = f'video/mp4; codecs="{codec_string(sps)}, mp4a.40.2"'
        # SPS/PPS live in the init segment; access-unit delimiters carry nothing MSE needs.
        body = b"".join(len(n).to_bytes(4, "big") + n for n in nals if n[0] & 0x1F not in (7, 8, 9))
        return int(packet.pts), Sample(body, TICKS_PER_FRAME, sync=bool(packet.is_keyframe))

    def _encode_audio(self, samples: np.ndarray):
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[None, :], np.float32), format="fltp",
                                           layout="mono")
        frame.sample_rate = self.sample_rate
        frame.pts = self._samples_in
        frame.time_base = self._a.time_base
        self._samples_in += samples.size
        return self._a.encode(frame)

    def _audio(self, pcm) -> list[tuple[int, Sample]]:
        if pcm is None or not np.asarray(pcm).size:
            return []
        pcm = np.clip(np.asarray(pcm, np.float32).reshape(-1), -1.0, 1.0)
        self._pending = np.concatenate([self._pending, pcm])
        n = self._frame_size
        full = self._pending.size // n * n
        packets = []
        for s in range(0, full, n):
            packets += list(self._encode_audio(self._pending[s:s + n]))
        self._pending = self._pending[full:].copy()
        return self._audio_samples(packets)

    def _audio_samples(self, packets) -> list[tuple[int, Sample]]:
        out = []
        for p in packets:
            if p.pts is None or p.pts < 0:
                continue  # the priming packet, see the module docstring
            out.append((int(p.pts), Sample(bytes(p), int(p.duration or self._frame_size))))
        return out

    def _segment(self, vs: list, as_: list) -> bytes | None:
        if not vs and not as_:
            return None
        if self.init is None:  # no frame encoded yet: keep the audio for the first segment
            self._carry += as_
            return None
        as_, self._carry = self._carry + as_, []
        tracks = []
        if vs:
            tracks.append((VIDEO_TRACK, vs[0][0] * TICKS_PER_FRAME, [s for _, s in vs]))
        if as_:
            tracks.append((AUDIO_TRACK, as_[0][0], [s for _, s in as_]))
        self.sequence += 1
        return media_segment(self.sequence, tracks)
