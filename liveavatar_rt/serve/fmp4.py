"""A minimal fragmented-MP4 (ISO BMFF) writer for Media Source Extensions.

One init segment (ftyp + moov: an H.264 track and an AAC track, empty sample tables, mvex)
and then one media segment (moof + mdat) per call, each written as soon as it is asked for.

Why not FFmpeg's mp4 muxer (PyAV): it only emits a fragment when the *next* one starts (or on
av_write_frame(NULL), which PyAV does not expose) and interleaves across tracks, which would
hold every block back until the following block exists, adding a whole block (0.48 s) of
latency. Here a block's fragment leaves the moment its frames are encoded.

Timestamps are integers in each track's timescale (video: `fps * 512` ticks per second, one
frame = 512 ticks; audio: the sample rate). Sample data: H.264 as 4-byte length-prefixed NAL
units (AVCC), AAC as raw access units.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

VIDEO_TRACK, AUDIO_TRACK = 1, 2
TICKS_PER_FRAME = 512
# trun sample_flags: a sync sample (depends on nothing) / a non-sync one (depends on others).
SYNC_FLAGS, NON_SYNC_FLAGS = 0x02000000, 0x01010000
_MATRIX = struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)


def box(kind: bytes, *payload: bytes) -> bytes:
    body = b"".join(payload)
    return struct.pack(">I", 8 + len(body)) + kind + body


def full_box(kind: bytes, version: int, flags: int, *payload: bytes) -> bytes:
    return box(kind, struct.pack(">I", (version << 24) | flags), *payload)


@dataclass
class Sample:
    data: bytes
    duration: int  # in the track's timescale
    sync: bool = True


def avc_config(sps: bytes, pps: bytes) -> bytes:
    """avcC (AVCDecoderConfigurationRecord) for one SPS and one PPS (NAL units without start
    codes). Baseline/main profiles only: high profiles need extra chroma fields."""
    if sps[1] in (100, 110, 122, 144):
        raise ValueError(f"H.264 profile_idc {sps[1]} needs the high-profile avcC fields; encode baseline")
    return box(b"avcC", bytes([1, sps[1], sps[2], sps[3], 0xFF, 0xE1]), struct.pack(">H", len(sps)), sps,
               bytes([1]), struct.pack(">H", len(pps)), pps)


def codec_string(sps: bytes) -> str:
    """RFC 6381 name of the H.264 stream, e.g. avc1.42C00B (profile, constraints, level)."""
    return "avc1." + sps[1:4].hex().upper()


def _descriptor(tag: int, body: bytes) -> bytes:
    if len(body) > 127:
        raise ValueError("descriptor too long for a one-byte size")
    return bytes([tag, len(body)]) + body


def _esds(asc: bytes, bitrate: int) -> bytes:
    """MPEG-4 ES descriptor carrying the AAC AudioSpecificConfig."""
    dsi = _descriptor(0x05, asc)
    dcd = _descriptor(0x04, bytes([0x40, 0x15]) + b"\0\0\0" + struct.pack(">II", bitrate, bitrate) + dsi)
    es = _descriptor(0x03, struct.pack(">HB", 0, 0) + dcd + _descriptor(0x06, b"\x02"))
    return full_box(b"esds", 0, 0, es)


def _trak(track_id: int, handler: bytes, timescale: int, tkhd_tail: bytes, media_header: bytes,
          sample_entry: bytes) -> bytes:
    tkhd = full_box(b"tkhd", 0, 3, struct.pack(">IIIII", 0, 0, track_id, 0, 0), b"\0" * 8, tkhd_tail)
    mdhd = full_box(b"mdhd", 0, 0, struct.pack(">IIIIHH", 0, 0, timescale, 0, 0x55C4, 0))  # language 'und'
    hdlr = full_box(b"hdlr", 0, 0, struct.pack(">I", 0), handler, b"\0" * 12, b"liveavatar_rt\0")
    dinf = box(b"dinf", full_box(b"dref", 0, 0, struct.pack(">I", 1), full_box(b"url ", 0, 1)))
    empty = [full_box(k, 0, 0, struct.pack(">I", 0)) for k in (b"stts", b"stsc", b"stco")]
    stbl = box(b"stbl", full_box(b"stsd", 0, 0, struct.pack(">I", 1), sample_entry), empty[0], empty[1],
               full_box(b"stsz", 0, 0, struct.pack(">II", 0, 0)), empty[2])
    return box(b"trak", tkhd, box(b"mdia", mdhd, hdlr, box(b"minf", media_header, dinf, stbl)))


def init_segment(width: int, height: int, fps: int, sps: bytes, pps: bytes, sample_rate: int, asc: bytes,
                 audio_bitrate: int = 64000) -> bytes:
    """ftyp + moov for one H.264 track (id 1) and one mono AAC track (id 2)."""
    ftyp = box(b"ftyp", b"isom", struct.pack(">I", 0x200), b"isomiso6avc1mp41")
    mvhd = full_box(b"mvhd", 0, 0, struct.pack(">IIII", 0, 0, 1000, 0), struct.pack(">IH", 0x10000, 0x100),
                    b"\0" * 10, _MATRIX, b"\0" * 24, struct.pack(">I", AUDIO_TRACK + 1))
    avc1 = box(b"avc1", b"\0" * 6, struct.pack(">H", 1), b"\0" * 16, struct.pack(">HH", width, height),
               struct.pack(">II", 0x480000, 0x480000), b"\0" * 4, struct.pack(">H", 1), b"\0" * 32,
               struct.pack(">Hh", 0x18, -1), avc_config(sps, pps))
    video = _trak(VIDEO_TRACK, b"vide", fps * TICKS_PER_FRAME,
                  struct.pack(">HHHH", 0, 0, 0, 0) + _MATRIX + struct.pack(">II", width << 16, height << 16),
                  full_box(b"vmhd", 0, 1, b"\0" * 8), avc1)
    mp4a = box(b"mp4a", b"\0" * 6, struct.pack(">H", 1), b"\0" * 8, struct.pack(">HHHH", 1, 16, 0, 0),
               struct.pack(">I", sample_rate << 16), _esds(asc, audio_bitrate))
    audio = _trak(AUDIO_TRACK, b"soun", sample_rate,
                  struct.pack(">HHHH", 0, 0, 0x100, 0) + _MATRIX + struct.pack(">II", 0, 0),
                  full_box(b"smhd", 0, 0, b"\0" * 4), mp4a)
    mvex = box(b"mvex", *[full_box(b"trex", 0, 0, struct.pack(">IIIII", t, 1, 0, 0, 0))
                          for t in (VIDEO_TRACK, AUDIO_TRACK)])
    return ftyp + box(b"moov", mvhd, video, audio, mvex)


def _traf(track_id: int, base_time: int, samples: list[Sample], data_offset: int) -> bytes:
    # tfhd flag 0x020000: sample data offsets count from this moof (what MSE expects).
    tfhd = full_box(b"tfhd", 0, 0x020000, struct.pack(">I", track_id))
    tfdt = full_box(b"tfdt", 1, 0, struct.pack(">Q", base_time))
    rows = b"".join(struct.pack(">III", s.duration, len(s.data), SYNC_FLAGS if s.sync else NON_SYNC_FLAGS)
                    for s in samples)
    # trun flags: data-offset, per-sample duration, size and flags.
    trun = full_box(b"trun", 0, 0x000701, struct.pack(">Ii", len(samples), data_offset), rows)
    return box(b"traf", tfhd, tfdt, trun)


def media_segment(sequence: int, tracks: list[tuple[int, int, list[Sample]]]) -> bytes:
    """moof + mdat. tracks: (track_id, base decode time in the track's timescale, samples);
    tracks without samples are left out. The mdat holds each track's samples in order."""
    tracks = [t for t in tracks if t[2]]
    if not tracks:
        raise ValueError("a media segment needs at least one sample")

    def moof(offsets: list[int]) -> bytes:
        trafs = [_traf(tid, base, samples, off) for (tid, base, samples), off in zip(tracks, offsets)]
        return box(b"moof", full_box(b"mfhd", 0, 0, struct.pack(">I", sequence)), *trafs)

    # The offsets are fixed-width fields, so the moof size does not depend on their values.
    size = len(moof([0] * len(tracks)))
    offsets, pos = [], size + 8
    for _, _, samples in tracks:
        offsets.append(pos)
        pos += sum(len(s.data) for s in samples)
    payload = b"".join(s.data for _, _, samples in tracks for s in samples)
    return moof(offsets) + box(b"mdat", payload)
