"""Streaming MP4 writer: durations, A/V sync, chunked writes, input errors (decoded with PyAV)."""
from __future__ import annotations

import av
import numpy as np
import pytest
import torch

from liveavatar_rt.io.video import Mp4Writer, probe

FPS, SR, W, H = 25, 16000, 128, 96
SPF = SR // FPS  # audio samples per video frame (640)


def _frames(n: int, start: int) -> np.ndarray:
    """Moving gradient frames [n, H, W, 3]; frame k has a distinct mean brightness."""
    k = np.arange(start, start + n)[:, None, None]
    x = np.arange(W)[None, None, :]
    y = np.arange(H)[None, :, None]
    f = np.zeros((n, H, W, 3), np.uint8)
    f[..., 0] = (x * 2 + k * 3) % 256
    f[..., 1] = (y * 2) % 256
    f[..., 2] = (k * 5) % 256
    return f


def _tone(n: int, start: int, hz: float = 440.0) -> np.ndarray:
    t = (np.arange(start, start + n)) / SR
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def _decode_audio(path) -> tuple[np.ndarray, float]:
    """Mono float samples and the time (s) of the first decoded sample."""
    out, t0 = [], None
    with av.open(str(path)) as c:
        for fr in c.decode(audio=0):
            if t0 is None:
                t0 = float(fr.pts * fr.time_base)
            out.append(fr.to_ndarray()[0])
    return np.concatenate(out), t0


def test_two_seconds_in_uneven_chunks(tmp_path):
    path = tmp_path / "a.mp4"
    chunks = [1, 9, 12, 12, 7, 9]  # 50 frames = 2 s, first block of 9 like the engine
    with Mp4Writer(path, W, H, FPS, SR) as w:
        done = 0
        for n in chunks:
            w.write(_frames(n, done), _tone(n * SPF, done * SPF))
            done += n
            # Incremental: at most one AAC frame of audio is ever held back.
            assert w._pending.size < 1024
            assert w.frames_written == done
        assert w.video_seconds == pytest.approx(2.0) and w.audio_seconds == pytest.approx(2.0)
    info = probe(path)
    assert info["video_codec"] == "h264" and info["audio_codec"] == "aac"
    assert (info["width"], info["height"], info["pix_fmt"]) == (W, H, "yuv420p")
    assert info["fps"] == pytest.approx(FPS)
    assert info["video_frames"] == 50
    assert abs(info["video_duration"] - 2.0) <= 1 / FPS
    assert info["audio_sample_rate"] == SR and info["audio_channels"] == 1
    assert abs(info["audio_duration"] - 2.0) <= 0.05
    assert info["audio_rms"] == pytest.approx(0.5 / np.sqrt(2), rel=0.1)

    # The tone survives: dominant frequency 440 Hz.
    pcm, _ = _decode_audio(path)
    seg = pcm[:SR]
    spec = np.abs(np.fft.rfft(seg))
    assert abs(np.argmax(spec) * SR / len(seg) - 440) <= 2

    # Frames decode close to what was written (lossy, so compare means).
    with av.open(str(path)) as c:
        dec = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    ref = _frames(50, 0)
    assert all(abs(d.astype(float).mean() - r.astype(float).mean()) < 3 for d, r in zip(dec, ref))


def test_audio_video_stay_in_sync(tmp_path):
    # 1 s black + silence, then 1 s white + tone: the decoded onsets must coincide.
    path = tmp_path / "sync.mp4"
    with Mp4Writer(path, W, H, FPS, SR) as w:
        for i in range(10):  # 10 chunks of 5 frames
            on = i >= 5
            f = np.full((5, H, W, 3), 255 if on else 0, np.uint8)
            a = _tone(5 * SPF, i * 5 * SPF) if on else np.zeros(5 * SPF, np.float32)
            w.write(f, a)
    with av.open(str(path)) as c:
        vt = next(float(f.pts * f.time_base) for f in c.decode(video=0) if f.to_ndarray(format="gray").mean() > 128)
    pcm, t0 = _decode_audio(path)
    win = SR // 100  # 10 ms windows
    rms = np.sqrt(np.mean(pcm[: len(pcm) // win * win].reshape(-1, win) ** 2, axis=1))
    at = t0 + np.argmax(rms > 0.5 * rms.max()) * win / SR
    assert vt == pytest.approx(1.0, abs=1e-6)
    assert abs(at - vt) < 1 / FPS


def test_video_only_and_torch_input(tmp_path):
    path = tmp_path / "v.mp4"
    with Mp4Writer(path, W, H, FPS, sample_rate=None) as w:
        w.write(torch.from_numpy(_frames(10, 0)))
        w.write(_frames(0, 10))  # empty chunk is fine
        with pytest.raises(ValueError, match="no audio stream"):
            w.write(_frames(1, 10), np.zeros(640, np.float32))
    info = probe(path)
    assert info["video_frames"] == 10 and info["audio_codec"] is None and info["audio_duration"] is None


def test_audio_only_chunks_and_clipping(tmp_path):
    # Audio may arrive in chunks not aligned with frames or AAC frames; loud input is clipped.
    path = tmp_path / "c.mp4"
    with Mp4Writer(path, W, H, FPS, SR) as w:
        w.write(_frames(25, 0), None)
        for n in (1000, 3333, 11667):
            w.write(_frames(0, 0), np.full(n, 3.0, np.float32))
    info = probe(path)
    assert abs(info["audio_duration"] - 1.0) <= 0.05 and info["video_frames"] == 25
    pcm, _ = _decode_audio(path)
    assert np.abs(pcm).max() < 1.2


@pytest.mark.parametrize("frames, match", [
    (np.zeros((2, H, W, 3), np.float32), "uint8"),
    (np.zeros((2, W, H, 3), np.uint8), r"\[n, 96, 128, 3\]"),
    (np.zeros((H, W, 3), np.uint8), r"\[n, 96, 128, 3\]"),
    (np.zeros((2, H, W, 4), np.uint8), r"\[n, 96, 128, 3\]"),
])
def test_bad_frames(tmp_path, frames, match):
    with Mp4Writer(tmp_path / "x.mp4", W, H) as w:
        with pytest.raises(ValueError, match=match):
            w.write(frames)
        with pytest.raises(TypeError, match="numpy"):
            w.write([[0]])


@pytest.mark.parametrize("pcm, match", [
    (np.zeros(640, np.int16), "float"),
    (np.zeros((640, 2), np.float32), "mono"),
])
def test_bad_audio(tmp_path, pcm, match):
    with Mp4Writer(tmp_path / "x.mp4", W, H) as w:
        with pytest.raises(ValueError, match=match):
            w.write(_frames(1, 0), pcm)


def test_bad_construction_and_closed(tmp_path):
    with pytest.raises(ValueError, match="even"):
        Mp4Writer(tmp_path / "o.mp4", 127, 96)
    with pytest.raises(ValueError, match="even"):
        Mp4Writer(tmp_path / "o.mp4", 128, 95)
    with pytest.raises(ValueError, match="fps"):
        Mp4Writer(tmp_path / "o.mp4", 128, 96, fps=0)
    w = Mp4Writer(tmp_path / "o.mp4", W, H)
    w.write(_frames(3, 0), _tone(3 * SPF, 0))
    w.close()
    w.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        w.write(_frames(1, 0))
    assert probe(tmp_path / "o.mp4")["video_frames"] == 3


def test_probe_missing(tmp_path):
    with pytest.raises(FileNotFoundError):
        probe(tmp_path / "none.mp4")
