"""Real clients over real sockets (127.0.0.1): whole sessions, concurrency, capacity,
disconnects, silence, backpressure. Every wait is bounded."""
from __future__ import annotations

import io
import json
import socket
import threading
import time

import numpy as np
import pytest
from PIL import Image
from websockets.exceptions import ConnectionClosed

from liveavatar_rt.serve.client import ServerError, StreamClient

from .conftest import SIDE, decode_stream, http_get, metric, png_bytes, run_session, wait_idle, wait_until

from .conftest import FULL_S, expected_frames


def media_segments(segments):
    return [s for s in segments if s.meta["frames"] > 0]


def test_full_session(server, engine, solo, speech, portrait):
    client, segments = solo
    pcm, rate = speech
    n = expected_frames(int(FULL_S * rate))
    assert client.ready["width"] == SIDE and client.ready["height"] == SIDE and client.ready["fps"] == 25
    assert client.init.meta["mime"].startswith('video/mp4; codecs="avc1.') and "mp4a.40.2" in client.init.meta["mime"]
    media = media_segments(segments)
    assert [s.meta["frames"] for s in media] == [9] + [12] * ((n - 9) // 12)
    assert [s.meta["start_frame"] for s in media] == list(np.cumsum([0] + [s.meta["frames"] for s in media[:-1]]))
    assert [s.meta["seq"] for s in segments] == list(range(1, len(segments) + 1))
    stats = client.done["stats"]
    assert stats["frames_sent"] == n and stats["dropped"] == 0 and stats["ttff_s"] > 0

    # The stream decodes, with every frame and its audio, both starting at t = 0.
    out = decode_stream(client.init.data, segments)
    assert out["frames"].shape == (n, SIDE, SIDE, 3)
    assert out["first_audio_pts"] == 0
    assert n * 640 <= out["audio_samples"] < n * 640 + 2048  # AAC codes whole 1024-sample frames

    # The frames are the engine's frames, in order: each decoded frame is nearest to the
    # offline render's frame at the same index (H.264 is lossy, so not bit-exact).
    image = np.asarray(Image.open(io.BytesIO(portrait)).convert("RGB"))
    ref = engine.pipe.generate(image, pcm[:int(FULL_S * rate)], rate, seed=0).frames
    assert ref.shape == out["frames"].shape
    a = out["frames"].reshape(n, -1).astype(np.float32)
    b = ref.reshape(n, -1).astype(np.float32)
    dist = np.stack([np.abs(b - a[i]).mean(-1) for i in range(n)])  # [decoded, reference]
    assert (dist.argmin(axis=1) == np.arange(n)).all()
    assert np.diag(dist).mean() < 0.5 * np.median(dist)


def test_metrics_after_session(server, solo):
    wait_until(lambda: metric(http_get(server.url + "/metrics")[1], "liveavatar_sessions_active") == 0, 30,
               "the session's teardown")
    status, text = http_get(server.url + "/metrics")
    assert status == 200
    assert metric(text, "liveavatar_frames_sent_total") >= solo[0].done["stats"]["frames_sent"]
    assert metric(text, "liveavatar_ttff_seconds_mean") > 0
    assert "# TYPE liveavatar_session_fps gauge" in text


def test_two_concurrent_sessions_are_isolated(server, portrait, speech, solo):
    """Session A (same inputs as the solo run) next to session B (other image, audio, seed):
    A's bytes equal the solo run's, so B leaked nothing into A."""
    pcm, rate = speech
    results = {}

    def run(name, image, audio, seed):
        try:
            results[name] = run_session(server.ws_url, image, audio, rate, seed=seed)
        except BaseException as e:  # reported by the main thread
            results[name] = e

    threads = [threading.Thread(target=run, args=("a", portrait, pcm[:int(FULL_S * rate)], 0)),
               threading.Thread(target=run, args=("b", png_bytes(64, 80, seed=3), pcm[-int(2.0 * rate):], 7))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a session did not finish in 120 s"
    for name in "ab":
        assert not isinstance(results[name], BaseException), results[name]
    (ca, sa), (cb, sb) = results["a"], results["b"]
    assert ca.ready["session"] != cb.ready["session"]
    solo_client, solo_segments = solo
    assert [s.data for s in sa] == [s.data for s in solo_segments]
    assert cb.done["stats"]["frames_sent"] == expected_frames(int(2.0 * rate))
    assert [s.data for s in sb] != [s.data for s in sa]


def test_capacity_refusal_then_admission(server, portrait, speech):
    """A slot is taken when the websocket is accepted, so two idle connections fill the server."""
    _, rate = speech
    wait_idle(server)  # the previous test's sessions may still be tearing down (slots in use)
    held = [StreamClient(server.ws_url, timeout=60) for _ in range(2)]
    try:
        wait_until(lambda: json.loads(http_get(server.url + "/healthz")[1])["sessions"] == 2, 10, "2 slots taken")
        t0 = time.monotonic()
        with StreamClient(server.ws_url, timeout=10) as third:
            with pytest.raises(ServerError) as err:
                third.start(portrait, sample_rate=rate)
            assert err.value.code == "busy" and "capacity" in err.value.message
            with pytest.raises(ConnectionClosed) as closed:
                third.recv(timeout=10)
            assert closed.value.rcvd.code == 1013
        assert time.monotonic() - t0 < 5, "a busy answer must be immediate, not a wait"
        _, text = http_get(server.url + "/metrics")
        assert metric(text, "liveavatar_sessions_refused_total") >= 1
        held.pop().close()
        wait_until(lambda: json.loads(http_get(server.url + "/healthz")[1])["sessions"] == 1, 30, "a freed slot")
        with StreamClient(server.ws_url, timeout=60) as again:  # admitted: it gets past admission to the image
            with pytest.raises(ServerError) as err:
                again.start(b"not an image", sample_rate=rate)
            assert err.value.code == "bad_image"
    finally:
        for c in held:
            c.close()
    wait_until(lambda: json.loads(http_get(server.url + "/healthz")[1])["sessions"] == 0, 30, "all slots free")


def _serve_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("liveavatar-serve-s")]


def test_disconnect_mid_stream_tears_down(server, portrait, speech):
    pcm, rate = speech
    c = StreamClient(server.ws_url, timeout=60)
    c.start(portrait, sample_rate=rate)
    c.send_audio(pcm[:2 * rate])
    assert c.next_segment(timeout=60).meta["frames"] == 9
    c.ws.socket.shutdown(socket.SHUT_RDWR)  # drop the TCP connection, no close handshake
    c.ws.socket.close()
    wait_until(lambda: json.loads(http_get(server.url + "/healthz")[1])["sessions"] == 0, 30, "teardown")
    wait_until(lambda: not _serve_threads(), 30, "the session's worker thread to end")
    _, text = http_get(server.url + "/metrics")
    assert metric(text, "liveavatar_sessions_active") == 0


def test_silence_keeps_the_avatar_streaming(server, portrait, speech):
    pcm, rate = speech
    with StreamClient(server.ws_url, timeout=60) as c:
        c.start(portrait, sample_rate=rate)
        c.send_audio(pcm[:int(0.6 * rate)])  # 0.6 s: one block; then the client goes quiet
        segs = [c.next_segment(timeout=60) for _ in range(4)]  # 4 blocks = 1.8 s: needs silence
        assert [s.meta["block"] for s in segs] == [0, 1, 2, 3]
        assert segs[-1].meta["stats"]["silence_s"] > 0.5
        c.end()
        rest = list(c.segments(timeout=60, limit=100))
    stats = c.done["stats"]
    assert stats["silence_s"] > 0.5 and stats["frames_sent"] == sum(s.meta["frames"] for s in segs + rest)


def test_slow_client_is_dropped_not_buffered(start_server, portrait, speech):
    """A client that stops acknowledging: at most queue_segments wait, older ones are dropped
    and counted; nothing grows. It then catches up and the session ends normally."""
    srv = start_server(ack_window=1, queue_segments=2)
    pcm, rate = speech
    with StreamClient(srv.ws_url, timeout=60) as c:
        c.start(portrait, sample_rate=rate)
        c.send_audio(pcm[:int(2.5 * rate)])  # 6 blocks
        c.end()
        first = c.next_segment(timeout=60, ack=False)  # the one segment the window allows
        sid = c.ready["session"]

        def rendered():
            v = metric(http_get(srv.url + "/metrics")[1], "liveavatar_session_frames_generated", f'session="{sid}"')
            return v == expected_frames(int(2.5 * rate))

        wait_until(rendered, 90, "every block to be rendered while the client stalls", interval=0.2)
        c.ack(first.meta["seq"])
        rest = list(c.segments(timeout=60, limit=100))
    stats = c.done["stats"]
    assert stats["dropped"] >= 24
    assert stats["frames_sent"] + stats["dropped"] == stats["frames_generated"] == expected_frames(int(2.5 * rate))
    assert len(rest) <= 2  # the queue held at most queue_segments (the last block + the stream's tail)


class FailingEngine:
    """The real engine, but every session's block 1 raises, as a failing kernel would."""

    def __init__(self, inner):
        self.inner, self.capacity_limit = inner, None
        self.fps, self.block_frames, self.audio_rate, self.note = inner.fps, inner.block_frames, inner.audio_rate, ""

    def open(self, image, prompt=None, seed=0):
        sess = self.inner.open(image, prompt=prompt, seed=seed)
        submit = sess.executor.submit

        def failing(job):
            if job.index == 1:
                raise RuntimeError("simulated kernel failure")
            return submit(job)

        sess.executor.submit = failing
        return sess


def test_model_failure_ends_only_that_session(engine, portrait, speech):
    from liveavatar_rt.serve.app import create_app
    from liveavatar_rt.serve.config import ServeConfig
    from liveavatar_rt.serve.server import BackgroundServer

    from .conftest import TEST_LIMITS

    pcm, rate = speech
    cfg = ServeConfig(**TEST_LIMITS)
    with BackgroundServer(create_app(FailingEngine(engine), cfg), cfg) as srv:
        with StreamClient(srv.ws_url, timeout=60) as c:
            c.start(portrait, sample_rate=rate)
            c.send_audio(pcm[:int(1.5 * rate)])
            assert c.next_segment(timeout=60).meta["block"] == 0
            with pytest.raises(ServerError) as err:
                c.next_segment(timeout=60)
        assert err.value.code == "internal" and "simulated kernel failure" in err.value.message
        wait_until(lambda: json.loads(http_get(srv.url + "/healthz")[1])["sessions"] == 0, 30, "teardown")
        _, text = http_get(srv.url + "/metrics")
        assert metric(text, "liveavatar_errors_total", 'code="internal"') == 1
        # the process still serves: block 0 of a new session comes out
        with StreamClient(srv.ws_url, timeout=60) as c:
            c.start(portrait, sample_rate=rate)
            c.send_audio(pcm[:int(0.5 * rate)])
            assert c.next_segment(timeout=60).meta["frames"] == 9
