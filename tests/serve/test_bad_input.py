"""Bad input of every kind gets a clear JSON error (code + message) and a close, and the
server keeps serving a healthy session running at the same time."""
from __future__ import annotations

import base64
import json
import threading

import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from .conftest import TEST_LIMITS, KiB, http_get, metric, png_bytes, run_session, wait_until

GOOD_AUDIO = {"format": "s16le", "sample_rate": 16000, "channels": 1}


def start_msg(image: bytes, **fields) -> str:
    msg = {"type": "start", "image": base64.b64encode(image).decode(), "audio": GOOD_AUDIO, **fields}
    return json.dumps({k: v for k, v in msg.items() if v is not None})


def expect_error(url: str, messages, code: str, close_code: int, headers=None, wait_ready: bool = False) -> str:
    """Send `messages` (str: text, bytes: binary; after "ready" if wait_ready), return the error
    message text after checking its code and the close code that follows."""
    with connect(url, additional_headers=headers, open_timeout=10, close_timeout=10, max_size=2 ** 24) as ws:
        try:
            for i, m in enumerate(messages):
                ws.send(m)
                if wait_ready and i == 0:
                    assert json.loads(ws.recv(timeout=60))["type"] == "ready"
        except ConnectionClosed:
            pass  # refused before everything was sent (auth): the error is still buffered
        for _ in range(100):  # bounded: skip any media the session produced first
            msg = ws.recv(timeout=60)
            if isinstance(msg, str) and json.loads(msg)["type"] == "error":
                break
        else:
            raise AssertionError("no error message")
        err = json.loads(msg)
        assert err["code"] == code, err
        assert isinstance(err["message"], str) and len(err["message"]) > 10
        with pytest.raises(ConnectionClosed) as closed:
            for _ in range(100):
                ws.recv(timeout=30)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == close_code
        return err["message"]


@pytest.fixture(scope="module")
def server(start_server):
    """Room for the healthy session plus bad clients whose teardown may still be running."""
    return start_server(max_sessions=4)


@pytest.fixture(scope="module")
def healthy(server, portrait, speech):
    """A session that streams while the bad clients below come and go."""
    pcm, rate = speech
    result = {}

    def run():
        try:
            result["ok"] = run_session(server.ws_url, portrait, pcm[:int(2.0 * rate)], rate, chunk_s=0.04,
                                       realtime=True)
        except BaseException as e:  # checked by test_healthy_session_unaffected
            result["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    yield t, result


@pytest.mark.parametrize("messages, code, close_code, says", [
    ([b"\x00\x01"], "protocol", 1008, "first message"),
    (["not json"], "bad_json", 1003, "JSON"),
    (["[1, 2]"], "bad_message", 1008, "type"),
    (['{"type": "hello"}'], "bad_message", 1008, "unknown message type"),
    (['{"type": "ack", "seq": 1}'], "protocol", 1008, "first message"),
    (['{"type": "start", "image": "%%%not base64", "audio": {"sample_rate": 16000}}'], "bad_image", 1008, "base64"),
    ([start_msg(b"hello, not an image")], "bad_image", 1008, "decode"),
    ([start_msg(png_bytes(32, 32))], "bad_image", 1008, "too small"),
    ([start_msg(png_bytes(64, 64), audio={"format": "mp3", "sample_rate": 16000})], "bad_audio_format", 1008, "mp3"),
    ([start_msg(png_bytes(64, 64), audio={"format": "s16le", "sample_rate": 4000})], "bad_sample_rate", 1008, "4000"),
    ([start_msg(png_bytes(64, 64), audio={"format": "s16le", "sample_rate": "16k"})], "bad_sample_rate", 1008, "integer"),
    ([start_msg(png_bytes(64, 64), audio={"sample_rate": 16000, "channels": 3})], "bad_audio_format", 1008, "channels"),
    ([start_msg(png_bytes(64, 64), audio="pcm")], "bad_audio_format", 1008, "object"),
    ([start_msg(png_bytes(64, 64), colour="blue")], "bad_message", 1008, "colour"),
    ([start_msg(png_bytes(64, 64), seed=-1)], "bad_request", 1008, "seed"),
    ([start_msg(png_bytes(64, 64), prompt="a person talking")], "bad_request", 1008, "text encoder"),
])
def test_malformed_messages(server, healthy, messages, code, close_code, says):
    assert says in expect_error(server.ws_url, messages, code, close_code)


def test_malformed_in_session(server, healthy, portrait):
    start = start_msg(portrait)
    assert "before" in expect_error(server.ws_url, [start, b"\x00\x00"], "protocol", 1008)  # audio before ready
    assert "sample frames" in expect_error(server.ws_url, [start, b"\x00\x00\x00"], "bad_audio", 1008,
                                           wait_ready=True)
    assert "already started" in expect_error(server.ws_url, [start, start], "protocol", 1008, wait_ready=True)
    f32 = start_msg(portrait, audio={"format": "f32le", "sample_rate": 16000})
    nan = np.array([0.0, np.nan], "<f4").tobytes()
    assert "NaN" in expect_error(server.ws_url, [f32, nan], "bad_audio", 1008, wait_ready=True)


def test_a_client_reconnecting_on_the_close_is_never_busy(server, healthy, portrait):
    """The slot is released before the close frame: 3x max_sessions sessions back to back, each
    failing on bad audio and reconnecting as soon as it is closed, all get their own error.
    (Closing first and releasing after the worker's join made this race and answer 'busy'.)"""
    start = start_msg(portrait)
    for _ in range(3 * TEST_LIMITS["max_sessions"]):
        assert "sample frames" in expect_error(server.ws_url, [start, b"\x00\x00\x00"], "bad_audio", 1008,
                                               wait_ready=True)


def test_oversized_uploads(server, healthy):
    big_file = png_bytes(300, 300)  # ~270 KB of noise > 200 KiB, its base64 still < the message limit
    assert len(big_file) > 200 * KiB
    assert "bytes exceeds" in expect_error(server.ws_url, [start_msg(big_file)], "image_too_large", 1009)
    huge = _flat_png(1100, 1000)  # a small file of 1.1 Mpx > the 1 Mpx limit
    assert "pixels" in expect_error(server.ws_url, [start_msg(huge)], "image_too_large", 1009)
    assert "409600" in expect_error(server.ws_url, [b"\x00" * (500 * KiB)], "message_too_large", 1009)
    assert "exceeds" in expect_error(server.ws_url, ["x" * (500 * KiB)], "message_too_large", 1009)
    # Far past the limit too: the websocket layer refuses it from the frame header, with the
    # same JSON error (transport.py)
    assert "409600" in expect_error(server.ws_url, [b"\x00" * (900 * KiB)], "message_too_large", 1009)


def _flat_png(width: int, height: int) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), (90, 120, 150)).save(buf, format="PNG")
    return buf.getvalue()


def test_wrong_auth(start_server, portrait):
    srv = start_server(token="s3cret-token")
    bad_start = start_msg(b"not an image")
    expect_error(srv.ws_url, [bad_start], "unauthorized", 1008)
    expect_error(srv.ws_url, [bad_start], "unauthorized", 1008, headers={"Authorization": "Bearer wrong"})
    expect_error(srv.ws_url + "?token=wrong", [bad_start], "unauthorized", 1008)
    # the right token passes auth: the next complaint is about the (bad) image
    expect_error(srv.ws_url, [bad_start], "bad_image", 1008, headers={"Authorization": "Bearer s3cret-token"})
    expect_error(srv.ws_url + "?token=s3cret-token", [bad_start], "bad_image", 1008)
    status, body = http_get(srv.url + "/metrics")
    assert status == 401 and json.loads(body)["code"] == "unauthorized"
    status, body = http_get(srv.url + "/metrics", token="s3cret-token")
    assert status == 200 and metric(body, "liveavatar_errors_total", 'code="unauthorized"') == 4
    assert http_get(srv.url + "/")[0] == 200  # the page itself is public; it asks for the token


def test_healthy_session_unaffected(server, healthy, speech):
    """Runs last in this module: the session that streamed through all of the above."""
    t, result = healthy
    t.join(120)
    assert not t.is_alive(), "the healthy session did not finish"
    assert "error" not in result, result.get("error")
    client, segments = result["ok"]
    pcm, rate = speech
    n16k = int(2.0 * rate)
    blocks = -(-(-(-n16k // 640) + 3) // 12)  # + the 3 frames of lead-in silence
    assert client.done["stats"]["frames_sent"] == 12 * blocks - 3
    assert client.done["stats"]["dropped"] == 0
    _, text = http_get(server.url + "/metrics")
    assert metric(text, "liveavatar_errors_total", 'code="bad_image"') >= 3
    # the bad sessions' teardown (which waits for their worker threads) ends too
    wait_until(lambda: metric(http_get(server.url + "/metrics")[1], "liveavatar_sessions_active") == 0, 30,
               "no active session")


def test_silent_client_times_out(start_server):
    srv = start_server(start_timeout_s=0.5)
    assert "0.5 s" in expect_error(srv.ws_url, [], "start_timeout", 1008)


def test_bad_player_report(server, healthy, portrait):
    start = start_msg(portrait)
    assert "ttff_s" in expect_error(server.ws_url, [start, '{"type": "player", "ttff_s": "fast"}'], "bad_message",
                                    1008)
