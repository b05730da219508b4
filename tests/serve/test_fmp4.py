"""The fMP4 writer + segment encoder, decoded back by FFmpeg (PyAV): frame count, A/V timing,
keyframes at segment starts (a segment decodes after a dropped one), box structure."""
from __future__ import annotations

import io
import struct

import av
import numpy as np
import pytest

from liveavatar_rt.serve.encoder import SegmentEncoder, split_annexb
from liveavatar_rt.serve.fmp4 import Sample, media_segment


def blocks(sizes, hw=(64, 96), seed=0):
    rng = np.random.default_rng(seed)
    for n in sizes:
        # smooth moving gradients: the decoded frames can be compared to the input
        t = rng.uniform(0, 6)
        y, x = np.mgrid[:hw[0], :hw[1]]
        frames = np.stack([np.stack([(x * 2 + 9 * (t + k)) % 256, (y * 2) % 256, np.full_like(x, 40 * k % 256)], -1)
                           for k in range(n)]).astype(np.uint8)
        pcm = (0.3 * np.sin(2 * np.pi * 330 * np.arange(n * 640) / 16000)).astype(np.float32)
        yield frames, pcm


def top_boxes(data: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(data):
        size, kind = struct.unpack(">I4s", data[pos:pos + 8])
        assert size >= 8
        out.append(kind)
        pos += size
    assert pos == len(data)
    return out


def decode(data: bytes):
    with av.open(io.BytesIO(data)) as c:
        video = [(f.pts, f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]
    with av.open(io.BytesIO(data)) as c:
        audio = [(f.pts, f.samples) for f in c.decode(audio=0)]
    return video, audio


def test_stream_decodes_with_all_frames_and_audio():
    enc = SegmentEncoder(96, 64, fps=25, sample_rate=16000)
    src, segs = [], []
    for frames, pcm in blocks([9, 12, 12, 12]):
        src.append(frames)
        segs.append(enc.encode(frames, pcm))
    tail = enc.flush()
    assert enc.mime.startswith('video/mp4; codecs="avc1.42') and enc.mime.endswith('mp4a.40.2"')  # baseline
    assert top_boxes(enc.init) == [b"ftyp", b"moov"]
    for s in segs + [tail]:
        assert top_boxes(s) == [b"moof", b"mdat"]
    video, audio = decode(enc.init + b"".join(segs) + tail)
    src = np.concatenate(src)
    assert len(video) == len(src) == 45
    assert [pts for pts, _ in video] == [k * 512 for k in range(45)]  # 25 fps in a 12800 Hz timescale
    err = np.abs(np.stack([f for _, f in video]).astype(int) - src.astype(int)).mean()
    assert err < 6, f"decoded frames differ from the input by {err:.1f} / 255 on average"
    assert audio[0][0] == 0  # audio starts with the first frame: the AAC priming was dropped
    total = sum(n for _, n in audio)
    assert 45 * 640 <= total < 45 * 640 + 1024


def test_every_segment_starts_with_a_keyframe():
    """A client that dropped segments 1 and 2 still decodes 0 and 3 (the player jumps the gap)."""
    enc = SegmentEncoder(96, 64)
    segs = [enc.encode(f, a) for f, a in blocks([9, 12, 12, 12], seed=1)]
    video, _ = decode(enc.init + segs[0] + segs[3])
    assert len(video) == 9 + 12
    assert video[9][0] == (9 + 24) * 512  # block 3 keeps its own time: a gap, not a shift
    with av.open(io.BytesIO(enc.init + b"".join(segs))) as c:
        keys = [f.key_frame for f in c.decode(video=0)]
    assert [i for i, k in enumerate(keys) if k] == [0, 9, 21, 33]


def test_segments_are_self_contained_and_numbered():
    enc = SegmentEncoder(64, 64)
    first = enc.encode(*next(blocks([12], hw=(64, 64))))
    second = enc.encode(*next(blocks([12], hw=(64, 64), seed=2)))
    seq = lambda seg: struct.unpack(">I", seg[seg.index(b"mfhd") + 8:seg.index(b"mfhd") + 12])[0]  # noqa: E731
    assert (seq(first), seq(second)) == (1, 2)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="even"):
        SegmentEncoder(65, 64)
    enc = SegmentEncoder(64, 64)
    with pytest.raises(ValueError, match="uint8"):
        enc.encode(np.zeros((2, 64, 64, 3), np.float32), None)
    with pytest.raises(ValueError, match="64, 64, 3"):
        enc.encode(np.zeros((2, 32, 64, 3), np.uint8), None)
    with pytest.raises(ValueError, match="at least one sample"):
        media_segment(1, [(1, 0, [])])


def test_split_annexb_handles_both_start_codes():
    nals = split_annexb(b"\x00\x00\x00\x01\x67\xaa\x00\x00\x01\x68\xbb\x00\x00\x00\x01\x65\xcc\xdd")
    assert nals == [b"\x67\xaa", b"\x68\xbb", b"\x65\xcc\xdd"]


def test_sample_offsets_point_into_mdat():
    payloads = [b"A" * 5, b"BB" * 7]
    seg = media_segment(3, [(1, 0, [Sample(payloads[0], 512)]), (2, 1024, [Sample(payloads[1], 1024)])])
    moof_size = struct.unpack(">I", seg[:4])[0]
    offsets = []
    pos = 0
    while (pos := seg.find(b"trun", pos + 1)) > 0:
        offsets.append(struct.unpack(">i", seg[pos + 12:pos + 16])[0])  # after version/flags and count
    assert offsets == [moof_size + 8, moof_size + 8 + 5]
    assert seg[offsets[0]:offsets[0] + 5] == payloads[0] and seg[offsets[1]:offsets[1] + 14] == payloads[1]
