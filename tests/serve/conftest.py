"""Fixtures: one tiny engine for the whole run, servers started in-process on ephemeral
127.0.0.1 ports (uvicorn in a thread), the example portrait and speech, bounded waits."""
from __future__ import annotations

import io
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from liveavatar_rt.serve.config import ServeConfig

ROOT = Path(__file__).resolve().parents[2]
PORTRAIT = ROOT / "assets" / "example" / "portrait.png"
SPEECH = ROOT / "assets" / "example" / "speech.wav"
KiB = 1024
SIDE = 64  # test portrait side (px)
# Small limits so the oversize tests stay cheap; the portrait (33 KiB) and its base64 fit.
# Generous deadlines (a slow shared machine must not trip them) except where a test sets its own.
TEST_LIMITS = dict(port=0, max_sessions=2, max_image_bytes=200 * KiB, max_image_pixels=1024 * 1024,
                   max_message_bytes=400 * KiB, start_timeout_s=5.0, audio_timeout_s=30.0, max_silence_s=30.0,
                   ack_timeout_s=60.0, silence_after_s=0.3)


@pytest.fixture(scope="session", autouse=True)
def random_tiny_weights():
    """These tests check transport, not the model: seeded random weights make consecutive frames
    very different, so frame order and identity survive lossy H.264 checkably (the trained
    model's frames change little from one to the next). Set for every process the tests start
    (TPP ranks inherit it), restored after the run."""
    old = os.environ.get("LIVEAVATAR_RT_TINY_RANDOM")
    os.environ["LIVEAVATAR_RT_TINY_RANDOM"] = "1"
    yield
    if old is None:
        os.environ.pop("LIVEAVATAR_RT_TINY_RANDOM", None)
    else:
        os.environ["LIVEAVATAR_RT_TINY_RANDOM"] = old


@pytest.fixture(scope="session")
def engine(random_tiny_weights):
    from liveavatar_rt.serve.engine import Engine

    return Engine.load("tiny")


@pytest.fixture(scope="session")
def start_server(engine):
    """start_server(**config) -> a running BackgroundServer (stopped at the end of the run)."""
    from liveavatar_rt.serve.app import create_app
    from liveavatar_rt.serve.server import BackgroundServer

    servers = []

    def start(**overrides):
        cfg = ServeConfig(**{**TEST_LIMITS, **overrides})
        srv = BackgroundServer(create_app(engine, cfg), cfg).start()
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.stop()


@pytest.fixture(scope="session")
def server(start_server):
    return start_server()


FULL_S = 1.5  # 24000 samples -> 38 video frames -> 4 blocks -> 9 + 3 * 12 = 45 frames


def expected_frames(n16k: int) -> int:
    """Frames of a session fed n16k samples at 16 kHz: the 3 frames of lead-in silence + the
    audio's frames in whole blocks of 12, minus the 3 the published stream start drops."""
    blocks = -(-(-(-n16k // 640) + 3) // 12)
    return 12 * blocks - 3


@pytest.fixture(scope="session")
def solo(server, portrait, speech):
    """One whole single-process session (1.5 s of speech, seed 0): (client, segments)."""
    pcm, rate = speech
    return run_session(server.ws_url, portrait, pcm[:int(FULL_S * rate)], rate, seed=0)


@pytest.fixture(scope="session")
def portrait() -> bytes:
    """The example portrait at 64x64 (the smallest accepted side): the tiny model then renders
    64x64 frames, ~4x cheaper than 128x128, which keeps these socket tests fast."""
    from PIL import Image

    buf = io.BytesIO()
    Image.open(PORTRAIT).convert("RGB").resize((SIDE, SIDE), Image.Resampling.BILINEAR).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="session")
def speech() -> tuple[np.ndarray, int]:
    from liveavatar_rt.io.audio_file import read_audio

    return read_audio(SPEECH)


def png_bytes(width: int, height: int, seed: int = 0) -> bytes:
    from PIL import Image

    rgb = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def http_get(url: str, token: str | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def metric(text: str, name: str, labels: str = "") -> float | None:
    """The value of one Prometheus sample `name{labels}` in an exposition text, or None."""
    key = name + (f"{{{labels}}}" if labels else "")
    for line in text.splitlines():
        if line.startswith(key + " "):
            return float(line.split()[-1])
    return None


def wait_until(pred, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def run_session(ws_url: str, image: bytes, pcm: np.ndarray, rate: int, seed: int = 0, chunk_s: float = 0.1,
                timeout: float = 60.0, realtime: bool = False, **client_kw):
    """A whole session: start, all audio (at once, or paced in real time), end, every segment.
    Returns (client, segments); client.ready / .init / .done hold the rest."""
    from liveavatar_rt.serve.client import StreamClient

    with StreamClient(ws_url, timeout=timeout, **client_kw) as c:
        c.start(image, sample_rate=rate, seed=seed, timeout=timeout)
        step = int(chunk_s * rate)
        t0 = time.monotonic()
        for i in range(0, len(pcm), step):
            c.send_audio(pcm[i:i + step])
            if realtime:
                time.sleep(max(0.0, t0 + (i + step) / rate - time.monotonic()))
        c.end()
        segments = list(c.segments(timeout=timeout, limit=1000))
    return c, segments


def decode_stream(init: bytes, segments) -> dict:
    """Decode init + media segments with PyAV: video frames (uint8) and audio sample count."""
    import av

    data = init + b"".join(s.data for s in segments)
    with av.open(io.BytesIO(data)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    with av.open(io.BytesIO(data)) as c:
        first_audio_pts, samples = None, 0
        for f in c.decode(audio=0):
            first_audio_pts = f.pts if first_audio_pts is None else first_audio_pts
            samples += f.samples
    return {"frames": np.stack(frames) if frames else np.zeros((0,)), "audio_samples": samples,
            "first_audio_pts": first_audio_pts}


def wait_idle(srv, timeout: float = 30.0) -> None:
    """Until the server has no session open (teardown runs just after "done" is sent)."""
    import json

    wait_until(lambda: json.loads(http_get(srv.url + "/healthz")[1])["sessions"] == 0, timeout, "an idle server")
